"""The session report: built once from what the session recorded, enqueued once.

`ReportWriter.write` promises at most one enqueued report per job, and tries until its time
budget is spent: a Redis that is briefly unreachable costs retries, not the report. Every
attempt uses the same arq job id, so one whose outcome was unknown (the connection dropped
mid-call) cannot make the report a second time.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from agent.errors import ReportWriteError
from agent.log import get_logger
from agent.redis_link import REDIS_ERRORS, RedisLink
from tasks.models import ParticipantRecord, SessionReport
from tasks.producer import enqueue_session_report

MAX_OUTPUTS_BYTES = 256_000
MAX_ERROR_CHARS = 2_000
ATTEMPT_TIMEOUT_S = 5.0
FIRST_RETRY_DELAY_S = 0.2
MAX_RETRY_DELAY_S = 2.0


def build_report(
    *,
    session_id: str,
    event_id: str,
    room: str,
    status: Literal["completed", "failed"],
    end_reason: str,
    error: str | None,
    agent_name: str | None,
    dispatch_id: str | None,
    job_id: str,
    worker_id: str | None,
    started_at: datetime,
    ended_at: datetime,
    participants: Sequence[ParticipantRecord],
    outputs: Mapping[str, Any],
    replaces: str | None = None,
    part_of: str | None = None,
    publisher: str | None = None,
) -> SessionReport:
    return SessionReport(
        session_id=session_id,
        event_id=event_id,
        room=room,
        status=status,
        agent_name=agent_name or None,
        dispatch_id=dispatch_id or None,
        job_id=job_id,
        worker_id=worker_id or None,
        started_at=started_at,
        ended_at=ended_at,
        duration_s=round(max((ended_at - started_at).total_seconds(), 0.0), 3),
        end_reason=end_reason,
        error=error[:MAX_ERROR_CHARS] if error else error,
        participants=list(participants),
        outputs=json_outputs(outputs),
        source="agent",
        replaces=replaces,
        part_of=part_of,
        publisher=publisher or None,
    )


def json_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The handler's outputs as plain JSON (anything else becomes its str()), within size."""
    text = json.dumps({str(k): v for k, v in outputs.items()}, default=str)
    if len(text.encode()) > MAX_OUTPUTS_BYTES:
        return {
            "outputs_dropped": f"the handler's outputs were {len(text.encode())} bytes, over "
            f"the {MAX_OUTPUTS_BYTES}-byte limit: store large results elsewhere and report "
            "a reference"
        }
    result: dict[str, Any] = json.loads(text)
    return result


class ReportWriter:
    """Enqueues one session's report, at most once."""

    def __init__(self, link: RedisLink, *, session_id: str, job_id: str) -> None:
        self._link = link
        self._session_id = session_id
        self._job_id = job_id
        self._lock = asyncio.Lock()
        self._written = False

    @property
    def written(self) -> bool:
        return self._written

    async def write(self, report: SessionReport, *, budget_s: float) -> None:
        """Enqueue `report` unless already done; raises ReportWriteError when the budget ran
        out first."""
        log = get_logger(status=report.status)
        async with self._lock:
            if self._written:
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + budget_s
            delay_s = FIRST_RETRY_DELAY_S
            attempt = 0
            while True:
                attempt += 1
                timeout_s = min(ATTEMPT_TIMEOUT_S, max(deadline - loop.time(), 0.05))
                try:
                    await asyncio.wait_for(self._attempt(report), timeout_s)
                except REDIS_ERRORS as exc:
                    problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
                else:
                    self._written = True
                    log.info("session report enqueued", attempts=attempt)
                    return
                pause_s = delay_s * random.uniform(0.8, 1.2)
                if loop.time() + pause_s >= deadline:
                    raise ReportWriteError(
                        f"could not enqueue the session report in {budget_s:.1f} s "
                        f"({attempt} attempts; last error {problem}): is REDIS_URL reachable?"
                    )
                log.warning("enqueuing the session report failed; retrying", error=problem)
                await asyncio.sleep(pause_s)
                delay_s = min(delay_s * 2, MAX_RETRY_DELAY_S)

    async def _attempt(self, report: SessionReport) -> None:
        # The job id as nonce: every attempt targets one arq job id, so an attempt that did
        # get through before its connection dropped makes the next one a no-op.
        redis = await self._link.get()
        await enqueue_session_report(redis, report, nonce=self._job_id)
