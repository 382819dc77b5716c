"""Reading the results stream: one entry per session, its terminal SessionReport.

Entry fields: `session_id`, `event_id`, `room`, `status`, `report` (the SessionReport as JSON).
Downstream services read it with a consumer group (`ResultsConsumer`) so each report is
handled once per group, and unacknowledged ones are handed out again after a crash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tasks.keys import RESULTS_STREAM
from tasks.models import SessionReport


@dataclass(frozen=True)
class ResultEntry:
    entry_id: str
    report: SessionReport


def _decode(entry_id: bytes | str, fields: dict[bytes, bytes]) -> ResultEntry:
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return ResultEntry(eid, SessionReport.model_validate_json(fields[b"report"]))


async def recent_results(redis: Redis, count: int = 50) -> list[ResultEntry]:
    """The newest `count` reports, newest first."""
    rows = await redis.xrevrange(RESULTS_STREAM, count=count)
    return [_decode(eid, fields) for eid, fields in rows]


class ResultsConsumer:
    """A member of a consumer group on the results stream."""

    def __init__(self, redis: Redis, group: str, consumer: str) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer

    async def ensure_group(self, start_id: str = "0") -> None:
        """Create the group (reading from `start_id`) unless it exists."""
        try:
            await self.redis.xgroup_create(RESULTS_STREAM, self.group, id=start_id, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, count: int = 100, block_ms: int | None = None) -> list[ResultEntry]:
        """Entries this consumer was handed before and has not acknowledged, else new ones."""
        for start in ("0", ">"):
            reply = await self.redis.xreadgroup(
                self.group,
                self.consumer,
                {RESULTS_STREAM: start},
                count=count,
                block=block_ms if start == ">" else None,
            )
            entries = [_decode(eid, f) for _, rows in reply or [] for eid, f in rows if f]
            if entries:
                return entries
        return []

    async def ack(self, *entry_ids: str) -> None:
        await self.redis.xack(RESULTS_STREAM, self.group, *entry_ids)

    async def follow(self, block_ms: int = 5000) -> AsyncIterator[ResultEntry]:
        """Every report, acknowledged after the caller's loop body has run for it."""
        await self.ensure_group()
        while True:
            for entry in await self.read(block_ms=block_ms):
                yield entry
                await self.ack(entry.entry_id)
