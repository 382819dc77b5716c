"""The dead-letter stream: failed dispatches and rejected jobs, each with the reason a person
can act on, and the replay of a failed dispatch."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from arq import ArqRedis

from orchestrator.errors import OrchestratorError
from tasks import keys
from tasks.connection import text
from tasks.producer import enqueue_job
from tasks.serialization import MAX_RAW_KEPT_CHARS, serialize


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    kind: (
        str  # "failed_dispatch" (replayable) | "invalid_event" | "invalid_report" | "malformed_job"
    )
    reason: str
    job_id: str
    event_id: str
    session_id: str
    payload: str  # the event (JSON) or the raw job text, kept so nothing is lost
    generation: int
    at_ms: int
    replayed_as: str | None = None

    @property
    def replayable(self) -> bool:
        return self.kind == "failed_dispatch" and self.replayed_as is None


class ReplayError(OrchestratorError):
    """A dead letter that cannot be replayed; the message says why."""


async def add(
    redis: ArqRedis,
    *,
    kind: str,
    reason: str,
    job_id: str,
    payload: Any,
    event_id: str = "",
    session_id: str = "",
    generation: int = 0,
) -> str:
    body = payload if isinstance(payload, str) else serialize({"event": payload}).decode()
    if kind != "failed_dispatch" and len(body) > MAX_RAW_KEPT_CHARS:
        # Rejected input is kept to be read, not replayed: its first part says enough.
        reason += f" (payload cut to its first {MAX_RAW_KEPT_CHARS} of {len(body)} characters)"
        body = body[:MAX_RAW_KEPT_CHARS]
    entry = await redis.xadd(
        keys.DEAD_LETTER_STREAM,
        {
            "kind": kind,
            "reason": reason,
            "job_id": job_id,
            "event_id": event_id,
            "session_id": session_id,
            "generation": generation,
            "payload": body,
            "at_ms": int(time.time() * 1000),
        },
        maxlen=keys.DEAD_LETTER_STREAM_MAXLEN,
        approximate=True,
    )
    return text(entry)


def _decode(
    entry_id: bytes | str, fields: dict[bytes, bytes], replayed: dict[str, str]
) -> DeadLetter:
    f = {text(k): text(v) for k, v in fields.items()}
    eid = text(entry_id)
    return DeadLetter(
        entry_id=eid,
        kind=f.get("kind", ""),
        reason=f.get("reason", ""),
        job_id=f.get("job_id", ""),
        event_id=f.get("event_id", ""),
        session_id=f.get("session_id", ""),
        payload=f.get("payload", ""),
        generation=int(f.get("generation") or 0),
        at_ms=int(f.get("at_ms") or 0),
        replayed_as=replayed.get(eid),
    )


async def recent(redis: ArqRedis, count: int = 50) -> list[DeadLetter]:
    """The newest dead letters, newest first."""
    rows = await redis.xrevrange(keys.DEAD_LETTER_STREAM, count=count)
    raw: dict[bytes, bytes] = await redis.hgetall(keys.DEAD_LETTERS_REPLAYED)  # type: ignore[misc]
    replayed = {text(k): text(v) for k, v in raw.items()}
    return [_decode(eid, fields, replayed) for eid, fields in rows]


_ENTRY_ID = re.compile(r"^([0-9]{1,20})-([0-9]{1,20})$")


def is_entry_id(text: str) -> bool:
    """Whether `text` is a stream entry id (two unsigned 64-bit numbers): nothing else names a
    dead letter, and Redis would refuse it."""
    match = _ENTRY_ID.match(text)
    return match is not None and all(int(part) < 2**64 for part in match.groups())


async def get(redis: ArqRedis, entry_id: str) -> DeadLetter | None:
    if not is_entry_id(entry_id):
        return None
    rows = await redis.xrange(keys.DEAD_LETTER_STREAM, min=entry_id, max=entry_id)
    if not rows:
        return None
    replayed = await redis.hget(keys.DEAD_LETTERS_REPLAYED, entry_id)  # type: ignore[misc]
    return _decode(rows[0][0], rows[0][1], {entry_id: text(replayed)} if replayed else {})


async def replay(redis: ArqRedis, entry_id: str) -> str:
    """Enqueue a failed dispatch again, as a new session of the same event; the new job id.

    Replaying twice is refused: the first replay's job id is returned in the error.
    """
    letter = await get(redis, entry_id)
    if letter is None:
        raise ReplayError(f"no dead letter {entry_id}")
    if letter.kind != "failed_dispatch":
        raise ReplayError(
            f"dead letter {entry_id} ({letter.kind}) cannot be replayed: it was rejected "
            f"({letter.reason}); fix the producer and send the event again"
        )
    generation = letter.generation + 1
    job_id = f"{keys.dispatch_job_id(letter.event_id)}:g{generation}"
    if not await redis.hsetnx(keys.DEAD_LETTERS_REPLAYED, entry_id, job_id):  # type: ignore[misc]
        raise ReplayError(
            f"dead letter {entry_id} was already replayed as {letter.replayed_as or job_id}"
        )
    event = json.loads(letter.payload)["event"]
    await enqueue_job(redis, keys.DISPATCH_AGENT, event, generation=generation, job_id=job_id)
    return job_id
