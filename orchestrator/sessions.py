"""The end of a session: the agent's report, an end requested by a producer, and the reports
the orchestrator writes itself (failed dispatch, lost agent)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError

from orchestrator import dead_letters, metrics
from orchestrator.context import Context, of
from orchestrator.errors import describe_validation
from orchestrator.rejections import reject
from orchestrator.state import Filing
from tasks import keys
from tasks.models import EndSessionRequest, SessionReport, SessionStatus

log = structlog.get_logger("orchestrator.sessions")


def _ms_to_dt(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(int(value) / 1000, UTC) if value else None


async def file_report(c: Context, report: SessionReport) -> Filing:
    """File a terminal report exactly once; another one for the session is kept aside."""
    filing = await c.store.file_report(report)
    if filing == "same":
        log.info("session report filed already (its job ran again)", session_id=report.session_id)
        return filing
    if filing == "filed":
        metrics.REPORTS.labels(report.status).inc()
        log.info(
            "session report filed",
            session_id=report.session_id,
            room=report.room,
            status=report.status,
            source=report.source,
            end_reason=report.end_reason,
        )
        return filing
    metrics.DUPLICATE_REPORTS.inc()
    await c.redis.xadd(
        keys.DUPLICATE_REPORTS_STREAM,
        {
            "session_id": report.session_id,
            "status": report.status,
            "source": report.source,
            "report": report.model_dump_json(),
        },
        maxlen=keys.RESULTS_STREAM_MAXLEN,
        approximate=True,
    )
    log.warning("duplicate report ignored", session_id=report.session_id, source=report.source)
    return filing


async def synthesize_report(
    c: Context, session: dict[str, str], *, status: SessionStatus, reason: str, end_reason: str
) -> bool:
    """File a report on the agent's behalf, from what the session record knows."""
    started = _ms_to_dt(session.get("assigned_at") or session.get("dispatched_at"))
    ended = datetime.now(UTC)
    report = SessionReport(
        session_id=session["session_id"],
        event_id=session.get("event_id", ""),
        room=session.get("room", ""),
        status=status,
        agent_name=session.get("agent_name") or None,
        dispatch_id=session.get("dispatch_id") or None,
        job_id=session.get("job_id") or None,
        worker_id=session.get("worker_id") or None,
        started_at=started,
        ended_at=ended,
        duration_s=(ended - started).total_seconds() if started else None,
        end_reason=end_reason,
        error=reason if status != "completed" else None,
        source="orchestrator",
    )
    return await file_report(c, report) == "filed"


async def fail_session(
    c: Context,
    *,
    session_id: str,
    event_id: str,
    room: str,
    agent_name: str,
    reason: str,
    generation: int,
    event: dict[str, Any],
    job_id: str,
) -> None:
    """A dispatch that will not happen: failed report (which frees the room), dead letter."""
    session = await c.store.get(session_id) or {}
    session.update(session_id=session_id, event_id=event_id, room=room, agent_name=agent_name)
    await synthesize_report(
        c, session, status="failed", reason=reason, end_reason="dispatch_failed"
    )
    await c.store.record_event(event_id, "failed", overwrite=True)
    entry = await dead_letters.add(
        c.redis,
        kind="failed_dispatch",
        reason=reason,
        job_id=job_id,
        payload=event,
        event_id=event_id,
        session_id=session_id,
        generation=generation,
    )
    metrics.DISPATCH_OUTCOMES.labels("failed").inc()
    log.error("dispatch failed", session_id=session_id, reason=reason, dead_letter=entry)


async def session_report(ctx: dict[str, Any], report: Any) -> dict[str, Any]:
    """The agent's report: file it on the results stream, end the session, free the room."""
    c = of(ctx)
    try:
        parsed = SessionReport.model_validate(report)
    except ValidationError as exc:
        reason = describe_validation(exc, "session report")
        return await reject(ctx, kind="invalid_report", reason=reason, payload=report)
    filing = await file_report(c, parsed)
    outcome = "duplicate" if filing == "other" else "filed"
    return {"outcome": outcome, "session_id": parsed.session_id}


async def end_session(ctx: dict[str, Any], request: Any) -> dict[str, Any]:
    """Delete the session's dispatch (its agent leaves) or its room (everyone leaves)."""
    c = of(ctx)
    try:
        parsed = EndSessionRequest.model_validate(request)
    except ValidationError as exc:
        reason = describe_validation(exc, "end-session request")
        return await reject(ctx, kind="invalid_event", reason=reason, payload=request)

    if parsed.session_id is not None:
        session = await c.store.get(parsed.session_id)
    else:
        assert parsed.room is not None
        holder = await c.store.room_holder(parsed.room)
        session = await c.store.get(holder) if holder else None
    if session is None or session.get("status") in ("completed", "failed", "lost"):
        return {"outcome": "not_found"}

    session_id, room = session["session_id"], session["room"]
    agent_took_job = bool(session.get("job_id")) or await _has_agent_job(c, session)
    await c.store.transition(
        session_id,
        ("claimed", "dispatched", "assigned", "ending"),
        status="ending",
        end_reason=parsed.reason,
        end_requested_at=int(datetime.now(UTC).timestamp() * 1000),
    )
    if parsed.delete_room:
        await c.livekit.delete_room(room)
    elif session.get("dispatch_id"):
        await c.livekit.delete_dispatch(session["dispatch_id"], room)
    log.info(
        "session end requested", session_id=session_id, room=room, delete_room=parsed.delete_room
    )

    if not agent_took_job:
        # No agent ever took the job, so no agent will report: close the session here.
        await synthesize_report(
            c,
            session,
            status="completed",
            reason="",
            end_reason=f"ended before an agent joined: {parsed.reason}",
        )
    return {"outcome": "ending", "session_id": session_id}


async def _has_agent_job(c: Context, session: dict[str, str]) -> bool:
    dispatch_id = session.get("dispatch_id")
    if not dispatch_id:
        return False
    for dispatch in await c.livekit.room_dispatches(session["room"]):
        if dispatch.id == dispatch_id:
            return bool(dispatch.state.jobs)
    return False
