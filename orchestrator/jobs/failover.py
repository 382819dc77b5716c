"""An agent that died: the one place that decides what becomes of its session.

Every sign of a death comes here: the agent worker's note that a job process exited
(`agent_exited`), an agent worker whose beat went silent (`worker_gone`), and reconciliation's
backstops (heartbeat silence, LiveKit seeing the agent leave). Where it helps, the session is
replaced: a new session for the same event and room, linked both ways, takes over the room's
claim in the same step that files the dead one's `lost` report (store.lua.REPLACE), so any
number of signals about one death make one replacement, and the room always has one holder.

It helps when:
- the session was not being ended (by its handler or `end_session`): that is `ending`, or the
  agent's report already queued;
- the event's restart_policy is not "never", and failover is on (LKD_MAX_RESTARTS > 0);
- people are still in the room, by LiveKit now (not agents: the dead one may linger, listed,
  until its peer connection times out; not recorders);
- the event's restart budget is not spent: at most LKD_MAX_RESTARTS replacements within
  LKD_RESTART_WINDOW_S. Past it the session `failed`, with a dead letter.
Otherwise the session ends `lost`, as it always did.
"""

from __future__ import annotations

from typing import Literal

import structlog

from orchestrator import metrics
from orchestrator.jobs.context import Context
from orchestrator.jobs.dispatch import target_of
from orchestrator.jobs.reports import fail_session, file_report, synthesized
from orchestrator.store.record import Session, SessionStatus
from orchestrator.store.sessions import Replacement, now_ms
from tasks import heartbeat, keys
from tasks.checkpoints import load_checkpoint
from tasks.connection import text
from tasks.models import MAX_METADATA_BYTES, JobMetadata, Resume, session_id_for

log = structlog.get_logger("orchestrator.jobs.failover")

Death = Literal["replaced", "lost", "failed"]


async def agent_died(c: Context, session: Session, reason: str) -> Death | None:
    """The session's agent died without its report (`reason` says how that is known): replace
    it, or end the session `lost` (or `failed`, its restart budget spent). None when nothing
    was done: its agent's report is queued after all, or another signal of the same death
    got here first."""
    if await _report_queued(c, session):
        return None
    if session.dispatch_id:
        # A zombie agent must not share the room with the next session.
        await c.livekit.delete_dispatch(session.dispatch_id, session.room)
    why_not = await _why_not_replace(c, session)
    if why_not is None:
        recent = _recent_restarts(c, session)
        if len(recent) >= c.settings.max_restarts:
            return await _budget_spent(c, session, reason, len(recent))
        return await _replace(c, session, reason, recent)
    filed = await file_report(
        c, synthesized(session, status="lost", reason=reason, end_reason="agent_lost")
    )
    if filed != "filed":
        return None
    metrics.AGENT_DEATHS.labels("lost").inc()
    log.warning(
        "session lost", session_id=session.session_id, room=session.room, reason=reason,
        not_replaced=why_not,
    )  # fmt: skip
    return "lost"


async def _why_not_replace(c: Context, session: Session) -> str | None:
    """Why the session gets no new agent; None when it should."""
    if session.part_of:
        return "it is one publisher's job: LiveKit starts those by itself"
    if c.settings.max_restarts == 0:
        return "failover is off (LKD_MAX_RESTARTS=0)"
    if session.restart_policy == "never":
        return "the event's restart_policy is never"
    if session.status == SessionStatus.ENDING:
        return "it was being ended"
    if not await c.livekit.room_people(session.room):
        return "nobody is left in the room"
    return None


def _recent_restarts(c: Context, session: Session) -> list[int]:
    since = now_ms() - int(c.settings.restart_window_s * 1000)
    return [t for t in session.restart_times() if t >= since]


async def _replace(c: Context, session: Session, reason: str, recent: list[int]) -> Death | None:
    restart = session.restart + 1
    new_id = session_id_for(session.event_id, session.generation, restart=restart)
    replacement = Replacement(
        session_id=new_id,
        job_metadata=await _resume_metadata(c, session, new_id, restart, reason),
        restart=restart,
        restarts=[*recent, now_ms()],
    )
    report = synthesized(
        session, status="lost", reason=reason, end_reason="agent_lost", replaced_by=new_id
    )
    filing = await c.store.replace(report, replacement)
    if filing == "not_holder":
        # The room's claim is not the session's (Redis lost it): no replacement can hold it.
        filing = await file_report(c, report.model_copy(update={"replaced_by": None}))
        if filing == "filed":
            metrics.AGENT_DEATHS.labels("lost").inc()
            return "lost"
        return None
    if filing != "filed":
        return None
    metrics.REPORTS.labels("lost").inc()
    metrics.AGENT_DEATHS.labels("replaced").inc()
    log.warning(
        "agent died with people in the room: replaced",
        session_id=session.session_id,
        replaced_by=new_id,
        room=session.room,
        restart=restart,
        reason=reason,
    )
    return "replaced"


async def _resume_metadata(
    c: Context, session: Session, new_id: str, restart: int, reason: str
) -> str:
    """The replacement's job metadata: the producer's payload, unchanged, and `resume`: whom
    it replaces, how that one ended, and the chain's last checkpoint (left out, with a
    warning, when it would not fit LiveKit's metadata limit)."""
    raw = await c.redis.get(keys.session_payload_key(session.session_id))
    previous = (
        JobMetadata.model_validate_json(text(raw))
        if raw is not None
        else JobMetadata(session_id=session.session_id, event_id=session.event_id)
    )
    checkpoint = await load_checkpoint(c.redis, session.session_id)
    if checkpoint is None and previous.resume is not None:
        checkpoint = previous.resume.checkpoint  # this one saved none: the chain's last
    resume = Resume(
        previous_session_id=session.session_id,
        attempt=restart,
        previous_status="lost",
        previous_error=reason,
        checkpoint=checkpoint,
    )
    metadata = JobMetadata(
        session_id=new_id, event_id=session.event_id, metadata=previous.metadata, resume=resume
    ).to_json()
    if len(metadata.encode()) > MAX_METADATA_BYTES and checkpoint is not None:
        log.warning(
            "checkpoint left out of the replacement's job metadata: the payload and it would "
            f"pass LiveKit's {MAX_METADATA_BYTES}-byte limit",
            session_id=new_id,
        )
        without = resume.model_copy(update={"checkpoint": None})
        metadata = previous.model_copy(update={"session_id": new_id, "resume": without}).to_json()
    return metadata


async def _budget_spent(c: Context, session: Session, reason: str, restarts: int) -> Death:
    window_s = c.settings.restart_window_s
    why = (
        f"{reason}; it was not replaced: its event's agent was replaced {restarts} times within "
        f"{window_s:g} s already (LKD_MAX_RESTARTS={c.settings.max_restarts}, "
        f"LKD_RESTART_WINDOW_S={window_s:g}). An agent that keeps dying in this room points at "
        "the session handler or the worker's resources: see its logs. Replaying the dead "
        "letter puts a new agent in the room"
    )
    target = await target_of(c, session)
    await fail_session(
        c,
        session,
        reason=why,
        event=target.event,
        job_id=f"failover:{session.session_id}",
        end_reason="restart_budget_spent",
    )
    metrics.AGENT_DEATHS.labels("failed").inc()
    return "failed"


async def _report_queued(c: Context, session: Session) -> bool:
    """Whether the agent's own report waits in the queue: a session that ended stops its
    heartbeat, and its report may wait for longer than the grace (the worker that took it was
    killed: arq runs it again later)."""
    session_id = session.session_id
    job_id = session.job_id
    if not job_id:
        taken = await heartbeat.agent_job(c.redis, session_id)
        job_id = taken.job_id if taken is not None else None
    # Our agent's report job is named by the LiveKit job it ran the session in.
    report = keys.report_job_id(session_id, job_id) if job_id else None
    return report is not None and bool(await c.redis.exists(keys.ARQ_JOB_PREFIX + report))
