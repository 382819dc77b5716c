"""Assignment confirmation: LiveKit drops a dispatch that no worker takes, silently. Some
seconds after each dispatch we look; an unassigned one is replaced, and after the configured
number of attempts the session fails with a reason that names the agent_name.

Where the agent already said which job it took for this dispatch (our agent does, with its
first heartbeat: `tasks.heartbeat`), that settles it without a call to LiveKit; otherwise
ListDispatch tells."""

from __future__ import annotations

import time
from typing import Any

import structlog
from arq import Retry

from orchestrator.context import Context, of
from orchestrator.errors import LiveKitError
from orchestrator.sessions import fail_session
from orchestrator.state import now_ms
from tasks import heartbeat, keys
from tasks.models import JobMetadata

log = structlog.get_logger("orchestrator.assignment")


async def confirm_assignment(
    ctx: dict[str, Any], session_id: str, dispatch_id: str, attempt: int
) -> dict[str, Any]:
    c = of(ctx)
    session = await c.store.get(session_id)
    if (
        session is None
        or session.get("status") != "dispatched"
        or session.get("dispatch_id") != dispatch_id
    ):
        return {"outcome": "moot"}
    room = session["room"]
    structlog.contextvars.bind_contextvars(
        session_id=session_id, room=room, dispatch_id=dispatch_id
    )
    try:
        taken = (
            await heartbeat.agent_job(c.redis, session_id) if c.settings.agent_heartbeats else None
        )
        if taken is not None and taken.dispatch_id == dispatch_id:
            return await _assigned(c, session_id, taken.job_id, taken.worker_id, "agent")
        try:
            dispatches = await c.livekit.room_dispatches(room)
        except LiveKitError as exc:
            if exc.retryable and ctx["job_try"] < c.settings.dispatch_max_tries:
                raise Retry(defer=c.backoff_s(ctx["job_try"])) from exc
            raise
        ours = next((d for d in dispatches if d.id == dispatch_id), None)
        if ours is not None and ours.state.jobs:
            job = ours.state.jobs[0]
            return await _assigned(c, session_id, job.id, job.state.worker_id, "livekit")
        return await _not_assigned(ctx, session, attempt, dispatch_present=ours is not None)
    finally:
        structlog.contextvars.clear_contextvars()


async def _assigned(
    c: Context, session_id: str, job_id: str, worker_id: str, seen_by: str
) -> dict[str, Any]:
    await c.store.transition(
        session_id,
        ("dispatched",),
        status="assigned",
        job_id=job_id,
        worker_id=worker_id,
        assigned_at=now_ms(),
    )
    log.info("assignment confirmed", job_id=job_id, worker_id=worker_id, seen_by=seen_by)
    return {"outcome": "assigned", "job_id": job_id, "seen_by": seen_by}


async def _not_assigned(
    ctx: dict[str, Any], session: dict[str, str], attempt: int, *, dispatch_present: bool
) -> dict[str, Any]:
    c = of(ctx)
    session_id, room, agent_name = session["session_id"], session["room"], session["agent_name"]
    if dispatch_present:
        await c.livekit.delete_dispatch(session["dispatch_id"], room)
    waited_s = (time.time() * 1000 - int(session.get("dispatched_at") or now_ms())) / 1000
    if attempt >= c.settings.assignment_attempts:
        first_ms = int(session.get("claimed_at") or now_ms())
        total_s = round(time.time() - first_ms / 1000)
        reason = (
            f"no agent worker accepted agent_name={agent_name!r} in {total_s} s "
            f"({attempt} dispatches): is a worker running with that agent_name, with capacity?"
        )
        await fail_session(
            c,
            session_id=session_id,
            event_id=session["event_id"],
            room=room,
            agent_name=agent_name,
            reason=reason,
            generation=int(session.get("generation") or 0),
            event={
                "event_id": session["event_id"],
                "room": room,
                "agent_name": agent_name,
                "metadata": await _event_metadata(c, session),
            },
            job_id=ctx["job_id"],
        )
        return {"outcome": "failed", "reason": reason}

    metadata = JobMetadata(
        session_id=session_id,
        event_id=session["event_id"],
        metadata=await _event_metadata(c, session),
    ).to_json()
    dispatch = await c.livekit.create_dispatch(agent_name, room, metadata)
    delay = c.settings.assignment_check_delay_s * 2**attempt
    await c.store.mark_dispatched(
        session_id,
        session["event_id"],
        dispatch.id,
        metadata,
        check_in_s=delay,
        attempt=attempt + 1,
    )
    log.warning(
        "dispatch not assigned, dispatched again",
        waited_s=round(waited_s, 1),
        attempt=attempt + 1,
        new_dispatch_id=dispatch.id,
        next_check_in_s=delay,
    )
    return {"outcome": "redispatched", "dispatch_id": dispatch.id}


async def _event_metadata(c: Context, session: dict[str, str]) -> dict[str, Any]:
    raw = await c.redis.get(keys.session_payload_key(session["session_id"]))
    if raw is None:
        return {}
    return JobMetadata.model_validate_json(raw).metadata
