"""`dispatch_agent`: one event in, at most one agent dispatch per room out."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from arq import Retry
from livekit import api
from pydantic import ValidationError

from orchestrator import metrics
from orchestrator.context import Context, of
from orchestrator.errors import LiveKitError, describe_validation
from orchestrator.rejections import reject
from orchestrator.sessions import fail_session
from tasks.models import DispatchRequest, session_id_for

log = structlog.get_logger("orchestrator.dispatch")

BACKLOG_WAIT_S = 0.025
"""An event that waited this long between due and started finds the worker behind: its claim
may then linger (Settings.backlog_linger_ms) to share a write, which drains a backlog faster
at a millisecond's cost to events already waiting many."""


async def dispatch_agent(ctx: dict[str, Any], event: Any, generation: int = 0) -> dict[str, Any]:
    c = of(ctx)
    if ctx["job_try"] == 1:
        metrics.EVENTS_RECEIVED.inc()
    try:
        request = DispatchRequest.model_validate(event)
    except ValidationError as exc:
        event_id = event.get("event_id") if isinstance(event, dict) else None
        return await reject(
            ctx,
            kind="invalid_event",
            reason=describe_validation(exc, "dispatch event"),
            payload=event,
            event_id=event_id if isinstance(event_id, str) else "",
        )

    session_id = session_id_for(request.event_id, generation)
    structlog.contextvars.bind_contextvars(
        event_id=request.event_id, session_id=session_id, room=request.room, job_try=ctx["job_try"]
    )
    try:
        return await _dispatch(ctx, c, request, session_id, generation)
    finally:
        structlog.contextvars.clear_contextvars()


async def _dispatch(
    ctx: dict[str, Any], c: Context, request: DispatchRequest, session_id: str, generation: int
) -> dict[str, Any]:
    if request.expires_at is not None and datetime.now(UTC) >= request.expires_at:
        await c.store.record_event(request.event_id, "expired", overwrite=False)
        metrics.DISPATCH_OUTCOMES.labels("expired").inc()
        log.info("event expired before dispatch", expires_at=request.expires_at.isoformat())
        return {"outcome": "expired"}

    agent_name = request.agent_name or c.settings.agent_name
    enqueue_time: datetime = ctx["enqueue_time"]
    behind = time.time() - ctx["score"] / 1000 > BACKLOG_WAIT_S  # score: due at, unix ms
    claim = await c.store.claim(
        session_id=session_id,
        generation=generation,
        event_id=request.event_id,
        room=request.room,
        agent_name=agent_name,
        enqueued_ms=int(enqueue_time.timestamp() * 1000),
        linger_s=c.settings.backlog_linger_ms / 1000 if behind else 0.0,
    )
    if claim.kind in ("deduplicated", "duplicate_event"):
        metrics.DISPATCH_OUTCOMES.labels(claim.kind).inc()
        log.info("event not dispatched", outcome=claim.kind, live_session=claim.session_id)
        return {"outcome": claim.kind, "session_id": claim.session_id}

    metadata = request.job_metadata(session_id)
    try:
        dispatch = None
        if claim.kind == "resume":
            # An earlier try claimed the room and may have created the dispatch before it
            # died: adopt that one rather than put a second agent in the room.
            dispatch = await find_session_dispatch(c, request.room, session_id)
            if dispatch is not None:
                log.info("adopted existing dispatch", dispatch_id=dispatch.id)
        if dispatch is None:
            dispatch = await c.livekit.create_dispatch(agent_name, request.room, metadata)
            metrics.TIME_TO_DISPATCH.observe(max(0.0, time.time() - enqueue_time.timestamp()))
    except LiveKitError as exc:
        return await _on_livekit_error(ctx, c, request, session_id, agent_name, generation, exc)

    recorded = await c.store.mark_dispatched(
        session_id,
        request.event_id,
        dispatch.id,
        metadata,
        check_in_s=c.settings.assignment_check_delay_s,
        attempt=1,
    )
    if not recorded:
        # The session ended (end_session) while we dispatched: take the agent back out.
        await c.livekit.delete_dispatch(dispatch.id, request.room)
        log.info("session ended during dispatch; dispatch withdrawn", dispatch_id=dispatch.id)
        return {"outcome": "withdrawn", "session_id": session_id}
    metrics.DISPATCH_OUTCOMES.labels("dispatched").inc()
    log.info("dispatched", dispatch_id=dispatch.id, agent_name=agent_name)
    return {"outcome": "dispatched", "session_id": session_id, "dispatch_id": dispatch.id}


async def _on_livekit_error(
    ctx: dict[str, Any],
    c: Context,
    request: DispatchRequest,
    session_id: str,
    agent_name: str,
    generation: int,
    exc: LiveKitError,
) -> dict[str, Any]:
    job_try: int = ctx["job_try"]
    if exc.retryable and job_try < c.settings.dispatch_max_tries:
        delay = c.backoff_s(job_try)
        await c.store.transition(session_id, ("claimed",), last_error=str(exc), tries=job_try)
        log.warning("LiveKit error, will retry", error=str(exc), retry_in_s=round(delay, 3))
        raise Retry(defer=delay)
    reason = str(exc)
    if exc.retryable:
        reason = f"gave up after {job_try} tries: {reason}"
    await fail_session(
        c,
        session_id=session_id,
        event_id=request.event_id,
        room=request.room,
        agent_name=agent_name,
        reason=reason,
        generation=generation,
        event=request.model_dump(mode="json", exclude_none=True),
        job_id=ctx["job_id"],
    )
    return {"outcome": "failed", "session_id": session_id, "reason": reason}


def dispatch_session_id(dispatch: api.AgentDispatch) -> str | None:
    """The session id a dispatch carries in its metadata, if it is one of ours."""
    try:
        value = json.loads(dispatch.metadata).get("session_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


async def find_session_dispatch(c: Context, room: str, session_id: str) -> api.AgentDispatch | None:
    for dispatch in await c.livekit.room_dispatches(room):
        if dispatch_session_id(dispatch) == session_id:
            return dispatch
    return None
