"""`dispatch_agent`: one event in, at most one agent dispatch per room out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from arq import Retry
from pydantic import ValidationError

from orchestrator import metrics
from orchestrator.errors import LiveKitError, describe_validation
from orchestrator.jobs.context import Context, of
from orchestrator.jobs.rejections import reject
from orchestrator.jobs.reports import fail_session
from orchestrator.jobs.retries import give_up_reason, job_lease, retry_delay, wait_for_lease
from orchestrator.store.record import Session, SessionStatus
from orchestrator.store.sessions import Lease
from tasks import keys
from tasks.connection import text
from tasks.models import DispatchOutcome, DispatchRequest, JobMetadata, session_id_for

log = structlog.get_logger("orchestrator.jobs.dispatch")

NOT_BEFORE_SLACK_S = 0.05
"""An event taken this much before its `not_before` or less goes now (clocks differ)."""
BACKLOG_WAIT_S = 0.025
"""An event that waited this long between due and started finds the worker behind: its claim
may then linger (Settings.backlog_linger_ms) to share a write, which drains a backlog faster
at a millisecond's cost to events already waiting many."""


def result(outcome: DispatchOutcome, **fields: Any) -> dict[str, Any]:
    """The job's result: its outcome, with what goes with it (`session_id`, `dispatch_id`,
    `reason`)."""
    return {"outcome": outcome, **fields}


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

    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        return await reject(
            ctx,
            kind="invalid_event",
            reason="invalid dispatch job: generation (its second argument) must be a "
            "non-negative integer, the number of the event's replays",
            payload=event,
            event_id=request.event_id,
        )
    if request.not_before is not None:
        early_s = (request.not_before - datetime.now(UTC)).total_seconds()
        if early_s > NOT_BEFORE_SLACK_S:
            # Queued due too soon (a producer's own enqueue can score it so): hold it.
            raise Retry(defer=early_s)
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
        return result("expired")

    agent_name = request.agent_name or c.settings.agent_name
    enqueue_time: datetime = ctx["enqueue_time"]
    behind = time.time() - ctx["score"] / 1000 > BACKLOG_WAIT_S  # score: due at, unix ms
    lease = job_lease(ctx)
    metadata = request.job_metadata(session_id)
    while True:
        claim = await c.store.claim(
            session_id=session_id,
            generation=generation,
            event_id=request.event_id,
            room=request.room,
            agent_name=agent_name,
            enqueued_ms=int(enqueue_time.timestamp() * 1000),
            dispatch_job=ctx["job_id"],
            lease=lease,
            job_metadata=metadata,
            priority=request.priority,
            restart_policy=request.restart_policy,
            expires_ms=_ms(request.expires_at),
            linger_s=c.settings.backlog_linger_ms / 1000 if behind else 0.0,
        )
        if claim.kind != "busy":
            break
        # Another run of this very job is dispatching (arq started it again after Redis lost
        # its in-progress mark): wait for it, then find what it did.
        await wait_for_lease(ctx, claim.busy_ms)
    if claim.kind == "duplicate_event" and claim.session_id == session_id and ctx["job_try"] > 1:
        # An earlier run of this job handled the event and did not live to record its result.
        return await _earlier_outcome(c, session_id)
    if claim.kind in ("deduplicated", "duplicate_event"):
        metrics.DISPATCH_OUTCOMES.labels(claim.kind).inc()
        log.info("event not dispatched", outcome=claim.kind, live_session=claim.session_id)
        return result(claim.kind, session_id=claim.session_id)
    if claim.kind == "waiting":
        metrics.DISPATCH_OUTCOMES.labels("waiting").inc()
        log.info("no free agent slot: waiting in line", agent_name=agent_name,
                 queue_position=claim.position)  # fmt: skip
        return result("waiting", session_id=session_id, queue_position=claim.position)
    target = Target(
        session_id=session_id,
        event_id=request.event_id,
        room=request.room,
        agent_name=agent_name,
        generation=generation,
        metadata=metadata,
        event=request.model_dump(mode="json", exclude_none=True),
        restart_policy=request.restart_policy,
    )
    async with c.store.holding(session_id, lease):
        return await dispatch_claimed(
            ctx, c, target, lease, adopt=claim.kind == "resume", queued_at=enqueue_time
        )


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Target:
    """A claimed session to dispatch, and what a dead letter needs to replay its event."""

    session_id: str
    event_id: str
    room: str
    agent_name: str
    generation: int
    metadata: str
    """The job metadata (JSON) its agent gets."""
    event: dict[str, Any]
    restart_policy: str | None = None


async def dispatch_claimed(
    ctx: dict[str, Any],
    c: Context,
    target: Target,
    lease: Lease,
    *,
    adopt: bool,
    queued_at: datetime | None,
    check_in_s: float | None = None,
) -> dict[str, Any]:
    """Dispatch a session that holds its room (and its slot, where the agent name has a line)
    and the `lease`; with `adopt`, first look for a dispatch an earlier try made. The time
    from `queued_at` to CreateDispatch's answer is the time to dispatch (none is measured for
    a session let out of the line: lkd_wait_seconds measures its wait). Its assignment is
    checked `check_in_s` later (LKD_ASSIGNMENT_CHECK_DELAY_S by default)."""
    session_id, room = target.session_id, target.room
    try:
        dispatch = None
        if adopt:
            # An earlier try claimed the room and may have created the dispatch before it
            # died: adopt that one rather than put a second agent in the room.
            dispatch = await c.livekit.session_dispatch(room, session_id)
            if dispatch is not None:
                log.info("adopted existing dispatch", dispatch_id=dispatch.id)
        if dispatch is None:
            dispatch = await c.livekit.create_dispatch(
                target.agent_name, room, target.metadata, target.restart_policy
            )
            if queued_at is not None:
                metrics.TIME_TO_DISPATCH.observe(max(0.0, time.time() - queued_at.timestamp()))
    except LiveKitError as exc:
        delay = retry_delay(ctx, exc)
        if delay is None:
            return await _fail(ctx, c, target, give_up_reason(ctx, exc))
        await c.store.transition(session_id, (SessionStatus.CLAIMED,), last_error=str(exc))
        log.warning("LiveKit error, will retry", error=str(exc), retry_in_s=round(delay, 3))
        raise Retry(defer=delay) from exc

    recorded = await c.store.mark_dispatched(
        session_id,
        target.event_id,
        dispatch.id,
        target.metadata,
        check_in_s=c.settings.assignment_check_delay_s if check_in_s is None else check_in_s,
        attempt=1,
        lease=lease,
    )
    if not recorded and await c.store.recorded_dispatch(session_id) != dispatch.id:
        # The session ended (end_session) while we dispatched: take the agent back out.
        await c.livekit.delete_dispatch(dispatch.id, room)
        log.info("session ended during dispatch; dispatch withdrawn", dispatch_id=dispatch.id)
        return result("withdrawn", session_id=session_id)
    metrics.DISPATCH_OUTCOMES.labels("dispatched").inc()
    log.info("dispatched", dispatch_id=dispatch.id, agent_name=target.agent_name)
    return result("dispatched", session_id=session_id, dispatch_id=dispatch.id)


async def target_of(c: Context, session: Session) -> Target:
    """A claimed session's Target, from its record and its kept job metadata (a session let
    out of its line, or one that replaces another)."""
    raw = await c.redis.get(keys.session_payload_key(session.session_id))
    metadata = (
        text(raw)
        if raw is not None
        else JobMetadata(session_id=session.session_id, event_id=session.event_id).to_json()
    )
    event: dict[str, Any] = {
        "event_id": session.event_id,
        "room": session.room,
        "agent_name": session.agent_name,
        "metadata": JobMetadata.model_validate_json(metadata).metadata,
        "priority": session.priority,
    }
    if session.restart_policy:
        event["restart_policy"] = session.restart_policy
    return Target(
        session_id=session.session_id,
        event_id=session.event_id,
        room=session.room,
        agent_name=session.agent_name,
        generation=session.generation,
        metadata=metadata,
        event=event,
        restart_policy=session.restart_policy,
    )


async def _earlier_outcome(c: Context, session_id: str) -> dict[str, Any]:
    """The outcome an earlier run of this job reached for its session."""
    session = await c.store.get(session_id)
    if session is not None and session.status == SessionStatus.FAILED:
        reason = session.last_error or ""
        return result("failed", session_id=session_id, reason=reason)
    if session is not None and session.dispatch_id:
        return result("dispatched", session_id=session_id, dispatch_id=session.dispatch_id)
    if session is not None and session.status == SessionStatus.WAITING:
        return result("waiting", session_id=session_id)
    return result("duplicate_event", session_id=session_id)


async def _fail(ctx: dict[str, Any], c: Context, target: Target, reason: str) -> dict[str, Any]:
    claimed = Session(
        session_id=target.session_id,
        status=SessionStatus.CLAIMED,
        event_id=target.event_id,
        room=target.room,
        agent_name=target.agent_name,
        generation=target.generation,
    )
    await fail_session(c, claimed, reason=reason, event=target.event, job_id=ctx["job_id"])
    return result("failed", session_id=target.session_id, reason=reason)
