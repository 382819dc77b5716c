"""`agent_exited`: an agent worker saw the job process of one of our sessions exit without its
report (killed, out of memory, crashed). Its main process lives on and says so at once
(`tasks.heartbeat.note_exit`), so the session is replaced (or ends `lost`, failover.py) now
rather than when its heartbeat's silence passes LKD_REPORT_GRACE_S.
"""

from __future__ import annotations

from typing import Any

import structlog

from orchestrator.errors import LiveKitError
from orchestrator.jobs.context import of
from orchestrator.jobs.failover import agent_died
from orchestrator.jobs.rejections import reject
from orchestrator.jobs.retries import retry_or_reason
from tasks import heartbeat

log = structlog.get_logger("orchestrator.jobs.exits")


async def agent_exited(ctx: dict[str, Any], session_id: Any, job_id: Any) -> dict[str, Any]:
    c = of(ctx)
    if not (isinstance(session_id, str) and isinstance(job_id, str)):
        reason = "invalid agent_exited job: its arguments must be a session id and a job id"
        return await reject(ctx, kind="invalid_job", reason=reason, payload=[session_id, job_id])
    session = await c.store.get(session_id)
    if session is None or not session.live:
        return {"outcome": "moot"}
    taken = await heartbeat.agent_job(c.redis, session_id)
    if job_id not in (session.job_id, taken.job_id if taken else None):
        # Not known to have run the session (a job that died before its first heartbeat, or
        # one of an earlier dispatch): the assignment check and reconciliation look after it.
        return {"outcome": "moot"}
    try:
        outcome = await agent_died(
            c,
            session,
            "its job process exited without a report (killed, out of memory, or crashed); "
            "its agent worker said so at once",
        )
    except LiveKitError as exc:
        return deferred(ctx, session_id, exc)
    return {"outcome": outcome or "reported"}


def deferred(ctx: dict[str, Any], session_id: str, exc: LiveKitError) -> dict[str, Any]:
    """LiveKit failed a step of the failover: tried again while the error may pass (arq's
    Retry), else left to reconciliation, which looks at the session again."""
    reason = retry_or_reason(ctx, exc)
    log.warning("failover left to reconciliation", session_id=session_id, error=reason)
    return {"outcome": "deferred", "reason": reason}
