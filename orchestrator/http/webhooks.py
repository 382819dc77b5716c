"""The LiveKit webhook receiver: signed events that say the room closed (`room_finished`) or
the session's agent left it (`participant_left`).

The webhook decides nothing about reports. For the room's live session it records the time
LiveKit saw the agent go (`gone_since`, which reconciliation measures the report grace from).
A closed room also ends the session, as a producer would ask (an `end_session` job: the
dispatch is withdrawn, and a session no agent ever took is closed at once). An agent that
left is no end by itself: it left because its session ended (its report follows), or because
it died, and then, once the grace has passed with no report and no worker of ours holding
it, reconciliation hands it to failover (jobs/failover.py), which replaces it if people are
still in the room. Reconciliation stays the safety net for missed webhooks.

An agent joining a room (`participant_joined`) that is not our live session's agent was
dispatched by something else (a token naming agents, automatic dispatch): that is said once
per room, with the fix (`orchestrator.gateway.strays`). An agent that may be the session's
(`is_session_agent`: one whose job we have not yet learnt) gets the benefit of the doubt;
`doctor`'s stray agents check, which reads LiveKit's dispatch lists, catches it.
"""

from __future__ import annotations

import jwt
import structlog
from aiohttp import web
from google.protobuf import json_format
from livekit.protocol import models, webhook

from orchestrator.gateway.strays import agent_name_of, stray_fix
from orchestrator.http.errors import ApiError
from orchestrator.http.observe import WEBHOOKS
from orchestrator.http.service import Service, of
from orchestrator.http.spec import Route
from orchestrator.store.record import LIVE, Session, SessionStatus
from orchestrator.store.sessions import now_ms
from tasks import EndSessionRequest, enqueue_end_session, keys

log = structlog.get_logger("orchestrator.webhooks")

AGENT = models.ParticipantInfo.Kind.AGENT
_ENDS = {
    "room_finished": "LiveKit room_finished: the room closed",
    "participant_left": "LiveKit participant_left: the agent left the room",
}


def is_session_agent(session: Session, participant: models.ParticipantInfo) -> bool:
    """Whether `participant` is the session's agent: the identity our agent takes
    (`agent-<session id>`, agent/admission.py), the one LiveKit gives an agent that names none
    (`agent-<job id>`), or an agent participant that is not another job's."""
    ours = {f"agent-{session.session_id}"} | (
        {f"agent-{session.job_id}"} if session.job_id else set()
    )
    if participant.identity in ours:
        return True
    if participant.kind != AGENT:
        return False
    return not (session.job_id and participant.identity.startswith("agent-AJ_"))


def why_not(session: Session | None, event: webhook.WebhookEvent) -> str | None:
    """Why the event does not end `session`; None when it does."""
    if session is None or not session.live:
        return "no_live_session"
    dispatched_at = session.dispatched_at
    if not dispatched_at:
        return "not_dispatched_yet"
    closed_s = event.created_at
    if event.event == "room_finished" and closed_s and dispatched_at >= (closed_s + 1) * 1000:
        return "room_closed_before_dispatch"  # our dispatch made a new room of that name
    if event.event == "participant_left" and (
        session.job_type == "publisher" or not is_session_agent(session, event.participant)
    ):
        # A session of jobs per publisher has many agents, each a part with its own record.
        return "not_the_agent"
    return None


async def notice_stray_agent(svc: Service, event: webhook.WebhookEvent) -> str:
    """An agent joined: ours, or one nobody dispatched through us (said once per room)."""
    room, agent = event.room.name, event.participant
    session = await svc.store.find_live(room=room)
    if session is not None and is_session_agent(session, agent):
        return "session_agent"
    first = await svc.redis.set(
        keys.stray_agent_key(room, event.room.sid),
        agent.identity,
        nx=True,
        ex=keys.STRAY_AGENT_NOTICE_S,
    )
    if first:
        agent_name = agent_name_of(agent.attributes)
        log.warning(
            "an agent nobody dispatched through lk-dispatch joined",
            room=room,
            agent_identity=agent.identity,
            agent_name=agent_name,
            beside_session=session.session_id if session else None,
            fix=stray_fix(agent_name),
        )
    return "stray_agent"


async def handle_event(svc: Service, event: webhook.WebhookEvent) -> str:
    """Act on one verified event; what was done, for the answer and the metrics."""
    if event.event == "participant_joined" and event.participant.kind == AGENT:
        return await notice_stray_agent(svc, event)
    if event.event not in _ENDS:
        return "ignored"
    room = event.room.name
    session = await svc.store.find_live(room=room)
    unmoved = why_not(session, event)
    if unmoved is not None or session is None:
        return unmoved or "no_live_session"
    session_id = session.session_id
    if not session.gone_since:
        await svc.store.transition(session_id, LIVE, gone_since=now_ms())
    if event.event == "participant_left":
        log.info("session's agent left the room", session_id=session_id, room=room)
        return "agent_gone"
    if session.status != SessionStatus.ENDING:
        end = EndSessionRequest(session_id=session_id, reason=_ENDS[event.event])
        await enqueue_end_session(svc.redis, end)
    log.info("session ending on webhook", session_id=session_id, room=room, webhook=event.event)
    return "ending"


def _rejection(exc: Exception) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "its token has expired"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "it was signed with another API key than LIVEKIT_API_KEY"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "its signature does not match LIVEKIT_API_SECRET"
    if isinstance(exc, jwt.PyJWTError):
        return f"its Authorization is not a valid LiveKit token ({type(exc).__name__})"
    if "hash mismatch" in str(exc):
        return "the body does not match the signed sha256 (altered in transit?)"
    return f"its token carries no body hash ({exc})"


async def livekit_webhook(request: web.Request) -> web.Response:
    svc = of(request)
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not token:
        WEBHOOKS.labels("unknown", "unsigned").inc()
        raise ApiError(401, "unsigned", "webhook rejected: no Authorization header")
    raw = await request.read()  # too large (413) or unreadable (400): said as such
    try:
        body = raw.decode("utf-8")
        event = svc.webhook_receiver.receive(body, token)
    except (UnicodeDecodeError, json_format.ParseError) as exc:
        WEBHOOKS.labels("unknown", "invalid").inc()
        raise ApiError(400, "invalid_event", f"not a LiveKit WebhookEvent: {exc}") from None
    except Exception as exc:
        reason = _rejection(exc)
        WEBHOOKS.labels("unknown", "bad_signature").inc()
        log.warning("webhook rejected", reason=reason)
        raise ApiError(401, "bad_signature", f"webhook rejected: {reason}") from None
    outcome = await handle_event(svc, event)
    WEBHOOKS.labels(event.event or "unknown", outcome).inc()
    return web.json_response({"event": event.event, "id": event.id, "outcome": outcome})


ROUTES = [
    Route(
        "POST",
        "/livekit/webhook",
        livekit_webhook,
        "LiveKit webhook receiver",
        "public",
        tag="livekit",
        errors=(400, 401, 413),
        description="Signed by LiveKit (Authorization: a JWT whose sha256 claim is the "
        "body's hash, with LIVEKIT_API_KEY/SECRET). room_finished and the agent's "
        "participant_left end the room's live session; an agent's participant_joined that "
        "is not the session's is logged once, with the fix.",
    )
]
