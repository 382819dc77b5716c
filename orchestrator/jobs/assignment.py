"""Assignment confirmation: LiveKit drops a dispatch that no worker takes, silently. Some
seconds after each dispatch the session's `confirm_assignment` job looks; an unassigned
dispatch is replaced, and after the configured number of attempts the session fails with a
reason that names the agent_name.

Where the agent already said which job it took for this dispatch (our agent does, with its
first heartbeat: `tasks.heartbeat`), that settles it without a call to LiveKit; otherwise
ListDispatch tells.

Dispatching again is as safe as the first dispatch:
- the step holds the session's lease (`SessionStore.take_lease`), so two runs of it never
  dispatch side by side;
- before it dispatches, it keeps or removes every dispatch of the session that still stands:
  one a worker runs a job of is kept (and recorded, if an earlier run of this step made it
  before it died or lost LiveKit's answer); the others are deleted, and those an earlier run
  made count as attempts;
- LiveKit's errors are retried or end the session exactly as for a first dispatch
  (`orchestrator.jobs.retries`): a session that cannot be dispatched again ends `failed`, with a
  dead letter that can be replayed;
- the new dispatch is recorded only while the session still has the one it replaces; one that
  ended meanwhile gets the new dispatch withdrawn.

A session whose agent name has a known capacity (it holds a slot: `orchestrator.jobs.line`) is
not dispatched again here: it goes back to its place at the head of the line, and is let out
again as soon as a slot is free.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from livekit import api
from livekit.protocol import agent

from orchestrator.errors import LiveKitError
from orchestrator.jobs import publishers
from orchestrator.jobs.context import Context, of
from orchestrator.jobs.reports import fail_session
from orchestrator.jobs.retries import job_lease, retry_or_reason, wait_for_lease
from orchestrator.store.record import Session, SessionStatus
from orchestrator.store.sessions import Lease, now_ms
from tasks import heartbeat, keys
from tasks.connection import text
from tasks.models import JobMetadata

log = structlog.get_logger("orchestrator.jobs.assignment")


async def confirm_assignment(
    ctx: dict[str, Any], session_id: str, dispatch_id: str, attempt: int
) -> dict[str, Any]:
    c = of(ctx)
    session = await c.store.get(session_id)
    if (
        session is None
        or session.status != SessionStatus.DISPATCHED
        or session.dispatch_id != dispatch_id
    ):
        return {"outcome": "moot"}
    structlog.contextvars.bind_contextvars(
        session_id=session_id, room=session.room, dispatch_id=dispatch_id, attempt=attempt
    )
    try:
        taken = (
            await heartbeat.agent_job(c.redis, session_id) if c.settings.agent_heartbeats else None
        )
        if taken is not None and taken.dispatch_id == dispatch_id:
            return await _assigned(c, session, dispatch_id, taken.job_id, taken.worker_id, "agent")
        if await publishers.publisher_agents(c, session.agent_name):
            return await publishers.confirmed(c, session, dispatch_id)
        lease = job_lease(ctx)
        while True:
            answer, busy_ms = await c.store.take_lease(
                session_id, lease, status=SessionStatus.DISPATCHED, dispatch_id=dispatch_id
            )
            if answer == "moved":
                return {"outcome": "moot"}
            if answer == "ok":
                break
            await wait_for_lease(ctx, busy_ms)  # another run of this check is at it
        async with c.store.holding(session_id, lease):
            return await _with_lease(ctx, c, session, dispatch_id, attempt, lease)
    finally:
        structlog.contextvars.clear_contextvars()


async def _with_lease(
    ctx: dict[str, Any],
    c: Context,
    session: Session,
    dispatch_id: str,
    attempt: int,
    lease: Lease,
) -> dict[str, Any]:
    session_id, room = session.session_id, session.room
    try:
        standing = await c.livekit.session_dispatches(room, session_id)
        taken = [(d, job) for d in standing for job in d.state.jobs if _running(job)]
        if taken:
            keep, job = next(((d, j) for d, j in taken if d.id == dispatch_id), taken[0])
            await _delete(c, room, [d for d in standing if d.id != keep.id])
            result = await _assigned(
                c, session, dispatch_id, job.id, job.state.worker_id, "livekit", keep=keep.id
            )
            await c.store.release_lease(session_id, lease)
            return result
        # No worker runs a job of any of them: each is a dispatch LiveKit dropped (it never
        # offers one again), or one a worker refused (terminate). Those an earlier run of this
        # step made, before it died or lost LiveKit's answer, were attempts too.
        await _delete(c, room, standing)
        if session.line_score is not None:
            # A session of a known capacity: a worker went full between its slot and its
            # dispatch. It goes back to its place at the head of the line, not to `failed`.
            requeued = await c.store.requeue(session_id, dispatch_id, lease)
            if requeued == "moved":
                return {"outcome": "moot"}
            if requeued == "requeued":
                log.warning("dispatch not taken by any worker: back to the head of the line")
                return {"outcome": "requeued"}
        attempt += len([d for d in standing if d.id != dispatch_id])
        if attempt >= c.settings.assignment_attempts:
            return await _fail(ctx, c, session, _nobody_took_it(session, attempt))
        metadata = await _job_metadata(c, session)
        dispatch = await c.livekit.create_dispatch(
            session.agent_name, room, metadata, session.restart_policy
        )
    except LiveKitError as exc:
        reason = retry_or_reason(ctx, exc)  # raises Retry while trying again may help
        return await _fail(ctx, c, session, reason)
    waited_s = (now_ms() - (session.dispatched_at or now_ms())) / 1000
    log.warning(
        "dispatch not assigned, dispatched again",
        waited_s=round(waited_s, 1),
        new_dispatch_id=dispatch.id,
    )
    return await _record(c, session, dispatch_id, dispatch, attempt, lease, "redispatched")


async def _record(
    c: Context,
    session: Session,
    replaced: str,
    dispatch: api.AgentDispatch,
    attempt: int,
    lease: Lease,
    outcome: str,
) -> dict[str, Any]:
    """Record `dispatch` as the session's next attempt, replacing `replaced`; withdraw it when
    the session moved on meanwhile (it ended, or another run recorded a dispatch)."""
    session_id, room = session.session_id, session.room
    delay = c.settings.assignment_check_delay_s * 2**attempt
    recorded = await c.store.mark_dispatched(
        session_id,
        session.event_id,
        dispatch.id,
        await _job_metadata(c, session),
        check_in_s=delay,
        attempt=attempt + 1,
        replaces=replaced,
        lease=lease,
    )
    if not recorded and await c.store.recorded_dispatch(session_id) != dispatch.id:
        await c.livekit.delete_dispatch(dispatch.id, room)
        await c.store.release_lease(session_id, lease)
        log.info("session moved on while dispatching again; dispatch withdrawn")
        return {"outcome": "withdrawn", "dispatch_id": dispatch.id}
    return {"outcome": outcome, "dispatch_id": dispatch.id, "next_check_in_s": delay}


async def _assigned(
    c: Context,
    session: Session,
    dispatch_id: str,
    job_id: str,
    worker_id: str,
    seen_by: str,
    *,
    keep: str | None = None,
) -> dict[str, Any]:
    """Mark the session assigned to `job_id`, in `keep` when that is not its recorded
    dispatch (an earlier run made it)."""
    fields: dict[str, Any] = {"dispatch_id": keep} if keep and keep != dispatch_id else {}
    await c.store.transition(
        session.session_id,
        (SessionStatus.DISPATCHED,),
        having_dispatch=dispatch_id,
        status=SessionStatus.ASSIGNED,
        job_id=job_id,
        worker_id=worker_id,
        assigned_at=now_ms(),
        **fields,
    )
    log.info("assignment confirmed", job_id=job_id, worker_id=worker_id, seen_by=seen_by)
    return {"outcome": "assigned", "job_id": job_id, "seen_by": seen_by}


def _running(job: agent.Job) -> bool:
    """Whether a job of a dispatch (as ListDispatch shows it) went to a worker that runs it:
    LiveKit lists a job a worker refused with terminate=true as JS_SUCCESS from the start,
    and never updates the state of one that runs."""
    return job.state.status == agent.JobStatus.JS_RUNNING


async def _delete(c: Context, room: str, dispatches: list[api.AgentDispatch]) -> None:
    for dispatch in dispatches:
        await c.livekit.delete_dispatch(dispatch.id, room)


def _nobody_took_it(session: Session, attempt: int) -> str:
    first_ms = session.claimed_at or now_ms()
    total_s = round(time.time() - first_ms / 1000)
    return (
        f"no agent worker accepted agent_name={session.agent_name!r} in {total_s} s "
        f"({attempt} dispatches): is a worker running with that agent_name, with capacity?"
    )


async def _fail(ctx: dict[str, Any], c: Context, session: Session, reason: str) -> dict[str, Any]:
    """The session cannot be dispatched again: `failed`, with a dead letter to replay it."""
    metadata = JobMetadata.model_validate_json(await _job_metadata(c, session)).metadata
    event = {
        "event_id": session.event_id,
        "room": session.room,
        "agent_name": session.agent_name,
        "metadata": metadata,
    }
    await fail_session(c, session, reason=reason, event=event, job_id=ctx["job_id"])
    return {"outcome": "failed", "reason": reason}


async def _job_metadata(c: Context, session: Session) -> str:
    """The job metadata the session was first dispatched with (kept while it is live)."""
    raw = await c.redis.get(keys.session_payload_key(session.session_id))
    if raw is not None:
        return text(raw)
    return JobMetadata(session_id=session.session_id, event_id=session.event_id).to_json()
