"""Agents that take a job per publisher (AGENT_JOB_TYPE=publisher, `tasks.parts`).

One event still makes one session and one dispatch for its room. LiveKit never runs that
dispatch's room job: it starts a job for each participant that publishes (and for those
publishing already). Each job is a part, a session of its own that its agent opens, beats
and reports as any session; reconciliation and failover treat a part as they treat any
session whose agent died (it ends `lost`: LiveKit starts the jobs per publisher itself, so
no replacement is made).

The event's session has no agent of its own. Its assignment is its dispatch in place for
a name whose agent workers are publisher workers (`confirmed`); it ends with its room: at
`end_session`, when LiveKit says the room closed, or once its dispatch is gone. Its one
report is then filed, `completed`, with its parts in `outputs.parts`.
"""

from __future__ import annotations

import structlog

from orchestrator.jobs.context import Context
from orchestrator.jobs.reports import file_report, synthesized
from orchestrator.store.record import Session, SessionStatus
from orchestrator.store.sessions import now_ms
from tasks import heartbeat
from tasks.parts import parts_of

log = structlog.get_logger("orchestrator.jobs.publishers")


def of_publishers(session: Session) -> bool:
    """Whether `session` is an event's session whose agents take a job per publisher."""
    return session.job_type == "publisher" and not session.part_of


async def publisher_agents(c: Context, agent_name: str) -> bool:
    """Whether the live agent workers of `agent_name` are publisher workers."""
    since = now_ms() - int(c.settings.agent_worker_timeout_s * 1000)
    records = [r for r in await heartbeat.worker_records(c.redis, since) if r.agent_name]
    named = [r for r in records if r.agent_name == agent_name]
    return bool(named) and all(r.job_type == "publisher" for r in named)


async def confirmed(c: Context, session: Session, dispatch_id: str) -> dict[str, str]:
    """The assignment check of a session of publisher agents: its dispatch stands, and
    LiveKit starts the jobs as people publish."""
    await c.store.transition(
        session.session_id,
        (SessionStatus.DISPATCHED,),
        having_dispatch=dispatch_id,
        status=SessionStatus.ASSIGNED,
        job_type="publisher",
        assigned_at=now_ms(),
    )
    log.info("assigned to publisher agents: a job per publisher", session_id=session.session_id)
    return {"outcome": "assigned", "job_type": "publisher"}


async def ended(c: Context, session: Session) -> str | None:
    """Reconciliation's look at a session of publisher agents: why it has ended (asked to,
    or its room or dispatch is gone), None while its room runs."""
    if session.status == SessionStatus.ENDING:
        return session.end_reason or "ended by request"
    if session.gone_since:
        return "the room closed"
    if await c.livekit.session_dispatch(session.room, session.session_id) is None:
        return "its dispatch is gone: the room closed, or the dispatch was deleted"
    return None


async def close(c: Context, session: Session, why: str) -> bool:
    """File the session's one report, `completed`, naming its parts; whether it was filed
    (its parts, each a session, report for themselves)."""
    parts = await parts_of(c.redis, session.session_id)
    report = synthesized(
        session, status="completed", reason="", end_reason=why, outputs={"parts": parts}
    )
    filed = await file_report(c, report) == "filed"
    if filed:
        log.info("publisher session closed", session_id=session.session_id, parts=len(parts))
    return filed
