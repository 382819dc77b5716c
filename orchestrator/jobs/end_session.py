"""`end_session`: a producer asks a session to end; its agent leaves (or everyone, with the
room deleted). A session no agent took yet is closed here, as no agent will report it."""

from __future__ import annotations

from typing import Any

import structlog
from pydantic import ValidationError

from orchestrator.errors import describe_validation
from orchestrator.jobs import publishers
from orchestrator.jobs.context import Context, of
from orchestrator.jobs.rejections import reject
from orchestrator.jobs.reports import synthesize_report
from orchestrator.store.record import LIVE, Session, SessionStatus
from orchestrator.store.sessions import now_ms
from tasks.models import EndSessionRequest

log = structlog.get_logger("orchestrator.jobs.end_session")


async def end_session(ctx: dict[str, Any], request: Any) -> dict[str, Any]:
    """Delete the session's dispatch (its agent leaves) or its room (everyone leaves)."""
    c = of(ctx)
    try:
        parsed = EndSessionRequest.model_validate(request)
    except ValidationError as exc:
        reason = describe_validation(exc, "end-session request")
        return await reject(ctx, kind="invalid_event", reason=reason, payload=request)

    session = await c.store.find_live(session_id=parsed.session_id, room=parsed.room)
    if session is None:
        return {"outcome": "not_found"}

    session_id, room = session.session_id, session.room
    agent_took_job = bool(session.job_id) or await _has_agent_job(c, session)
    await c.store.transition(
        session_id,
        LIVE,
        status=SessionStatus.ENDING,
        end_reason=parsed.reason,
        end_requested_at=now_ms(),
    )
    if parsed.delete_room:
        await c.livekit.delete_room(room)
    elif session.dispatch_id:
        await c.livekit.delete_dispatch(session.dispatch_id, room)
    log.info(
        "session end requested", session_id=session_id, room=room, delete_room=parsed.delete_room
    )

    if publishers.of_publishers(session):
        # Its parts (a job per publisher) end with the dispatch, each with its report.
        await publishers.close(c, session, parsed.reason)
    elif not agent_took_job:
        # No agent ever took the job, so no agent will report: close the session here.
        await synthesize_report(
            c,
            session,
            status="completed",
            reason="",
            end_reason=f"ended before an agent joined: {parsed.reason}",
        )
    return {"outcome": "ending", "session_id": session_id}


async def _has_agent_job(c: Context, session: Session) -> bool:
    if not session.dispatch_id:
        return False
    for dispatch in await c.livekit.room_dispatches(session.room):
        if dispatch.id == session.dispatch_id:
            return bool(dispatch.state.jobs)
    return False
