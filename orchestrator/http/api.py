"""The JSON API under /v1: dispatch and end sessions, look them up, give the people in a room
their join tokens, read results and dead letters, replay a failed dispatch."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

from aiohttp import web
from arq.jobs import Job
from pydantic import BaseModel, ValidationError

from orchestrator.gateway.join import Join, Participant, join_token
from orchestrator.http.errors import ApiError, invalid, not_found
from orchestrator.http.schemas import (
    CountQuery,
    DeadLetterPage,
    DeadLetterQuery,
    DeadLetterView,
    DispatchAccepted,
    DispatchBody,
    EndSessionAccepted,
    EventView,
    ReplayAccepted,
    ResultPage,
    ResultView,
    SessionPage,
    SessionQuery,
    SessionView,
    session_answer,
)
from orchestrator.http.service import of
from orchestrator.http.spec import Route
from orchestrator.store import dead_letters, line, queries
from orchestrator.store.record import Session
from orchestrator.store.sessions import now_ms
from tasks import (
    EndSessionRequest,
    enqueue_dispatch,
    enqueue_end_session,
    keys,
    recent_results,
    session_id_for,
)

M = TypeVar("M", bound=BaseModel)


async def parse_body(request: web.Request, model: type[M]) -> M:
    """The JSON body as `model`, or a 422 naming every invalid field."""
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        raise invalid(exc) from None


def parse_query(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise invalid(exc, "query") from None


ANSWER_WAIT_S = 1.0
"""How long POST /v1/dispatches waits for a worker's outcome, so that its answer says whether
the session waits in line, and where."""
ANSWER_POLL_S = 0.005


def reply(answer: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(answer.model_dump(mode="json"), status=status)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def _event(request: web.Request, event_id: str) -> EventView:
    svc = of(request)
    record: dict[bytes, bytes] = await svc.redis.hgetall(keys.event_key(event_id))  # type: ignore[misc]
    return EventView(
        event_id=event_id,
        job_id=keys.dispatch_job_id(event_id),
        session_id=_text(record.get(b"session_id")),
        outcome=_text(record.get(b"outcome")),
    )


async def post_dispatch(request: web.Request) -> web.Response:
    body = await parse_body(request, DispatchBody)
    svc = of(request)
    job = await enqueue_dispatch(svc.redis, body.request())
    event = await _handled(request, body)
    session_id = event.session_id or session_id_for(body.event_id)
    place: dict[str, Any] = {}
    if event.outcome == "waiting":
        session = await queries.get_session(svc.redis, session_id)
        if session is not None:
            place = await line.place(svc.redis, svc.store.line, session, now_ms())
    answer = DispatchAccepted(
        job_id=job.job_id,
        event_id=body.event_id,
        session_id=session_id,
        outcome=event.outcome,
        status_url=f"/v1/sessions/{session_id}",
        **place,
    )
    if body.participant is not None:
        await _same_room(job, body)
        answer.join = join_token(of(request).settings, body.room, body.participant)
    return reply(answer, 202)


async def _handled(request: web.Request, body: DispatchBody) -> EventView:
    """The event's record once a worker has handled it (dispatched it, put it in line, ...),
    waiting up to ANSWER_WAIT_S (not for an event due later); as it stands then."""
    deadline = time.monotonic() + ANSWER_WAIT_S
    while True:
        event = await _event(request, body.event_id)
        if event.outcome not in (None, "claimed") or body.not_before is not None:
            return event  # "claimed": its dispatch is being made
        if time.monotonic() >= deadline:
            return event
        await asyncio.sleep(ANSWER_POLL_S)


async def _same_room(job: Job, body: DispatchBody) -> None:
    """A repeated event keeps the room it was first received for: a join token for another
    room would send the person where no agent of this event goes."""
    info = await job.info()
    payload = info.args[0] if info is not None and info.args else None
    room = payload.get("room") if isinstance(payload, dict) else None
    if room is not None and room != body.room:
        raise ApiError(
            409,
            "event_conflict",
            f"event {body.event_id!r} was received for room {room!r}, not {body.room!r}; "
            "send a new event_id for another room",
        )


async def get_event(request: web.Request) -> web.Response:
    event_id = request.match_info["event_id"]
    event = await _event(request, event_id)
    if event.outcome is None:
        redis = of(request).redis
        queued = await redis.exists(
            keys.ARQ_JOB_PREFIX + event.job_id, keys.ARQ_RESULT_PREFIX + event.job_id
        )
        if not queued:
            raise not_found(f"no event {event_id!r}: never received, or older than the retention")
        event.session_id = session_id_for(event_id)
    return reply(event)


async def post_end_session(request: web.Request) -> web.Response:
    body = await parse_body(request, EndSessionRequest)
    store = of(request).store
    if body.session_id is not None:
        session = await store.get(body.session_id)
        if session is None:
            raise not_found(f"no session {body.session_id!r}")
    else:
        assert body.room is not None
        session = await store.find_live(room=body.room)
        if session is None:
            raise not_found(f"no live session in room {body.room!r}")
    if session.terminal:
        raise ApiError(
            409,
            "already_ended",
            f"session {session.session_id} has already ended ({session.status})",
        )
    job = await enqueue_end_session(of(request).redis, body)
    answer = EndSessionAccepted(job_id=job.job_id, session_id=session.session_id, room=session.room)
    return reply(answer, 202)


async def post_session_token(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    participant = await parse_body(request, Participant)
    session = await queries.get_session(of(request).redis, session_id)
    if session is None:
        raise not_found(f"no session {session_id!r}: unknown, or older than the session retention")
    if session.terminal:
        raise ApiError(
            409,
            "already_ended",
            f"session {session_id} has ended ({session.status}): its room has no agent to join",
        )
    return reply(join_token(of(request).settings, session.room, participant), 201)


async def _session_reply(
    request: web.Request, session: Session | None, missing: str
) -> web.Response:
    if session is None:
        raise not_found(missing)
    svc = of(request)
    place = await line.place(svc.redis, svc.store.line, session, now_ms())
    if session.replaces or session.replaced_by:
        place = {**(place or {}), "chain": await queries.chain(svc.redis, session)}
    return web.json_response(session_answer(session, place))


async def get_session(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    session = await queries.get_session(of(request).redis, session_id)
    return await _session_reply(
        request, session, f"no session {session_id!r}: unknown, or older than the session retention"
    )


async def get_room_session(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    session = await queries.newest_in_room(of(request).redis, room)
    return await _session_reply(request, session, f"room {room!r} has no session")


def _ms(value: Any) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


async def list_sessions(request: web.Request) -> web.Response:
    q = parse_query(request, SessionQuery)
    found = await queries.list_sessions(
        of(request).redis,
        status=q.status,
        agent_name=q.agent_name,
        since_ms=_ms(q.since),
        until_ms=_ms(q.until),
        limit=q.limit,
    )
    return web.json_response({"sessions": [session_answer(s) for s in found]})


async def results_page(request: web.Request, count: int) -> list[ResultView]:
    entries = await recent_results(of(request).redis, count)
    return [ResultView(entry_id=e.entry_id, report=e.report) for e in entries]


async def list_results(request: web.Request) -> web.Response:
    q = parse_query(request, CountQuery)
    return reply(ResultPage(results=await results_page(request, q.count)))


async def dead_letter_page(
    request: web.Request, count: int, include_payload: bool = False
) -> list[DeadLetterView]:
    letters = await dead_letters.recent(of(request).redis, count)
    return [
        DeadLetterView(
            entry_id=d.entry_id,
            kind=d.kind,
            reason=d.reason,
            job_id=d.job_id,
            event_id=d.event_id,
            session_id=d.session_id,
            generation=d.generation,
            at_ms=d.at_ms,
            replayable=d.replayable,
            replayed_as=d.replayed_as,
            payload=d.payload if include_payload else None,
        )
        for d in letters
    ]


async def list_dead_letters(request: web.Request) -> web.Response:
    q = parse_query(request, DeadLetterQuery)
    page = await dead_letter_page(request, q.count, q.include_payload)
    return reply(DeadLetterPage(dead_letters=page))


async def replay_dead_letter(request: web.Request) -> web.Response:
    entry_id = request.match_info["entry_id"]
    redis = of(request).redis
    letter = await dead_letters.get(redis, entry_id)
    if letter is None:
        raise not_found(f"no dead letter {entry_id!r}")
    try:
        job_id = await dead_letters.replay(redis, entry_id)
    except dead_letters.ReplayError as exc:
        raise ApiError(409, "not_replayable", str(exc)) from None
    return reply(ReplayAccepted(entry_id=entry_id, job_id=job_id), 202)


ROUTES = [
    Route("POST", "/v1/dispatches", post_dispatch, "Dispatch an agent for an event", "write",
          body=DispatchBody, answer=DispatchAccepted, status=202, errors=(409,),
          description="Idempotent on event_id: the same event again returns the same ids "
                      "(and, with a participant, a new join token)."),
    Route("GET", "/v1/events/{event_id}", get_event, "What happened to an event", "read",
          answer=EventView, errors=(404,)),
    Route("POST", "/v1/sessions/end", post_end_session, "End a session by id or room", "write",
          body=EndSessionRequest, answer=EndSessionAccepted, status=202, errors=(404, 409)),
    Route("GET", "/v1/sessions", list_sessions, "Recent sessions, newest first", "read",
          query=SessionQuery, answer=SessionPage),
    Route("GET", "/v1/sessions/{session_id}", get_session, "A session by id", "read",
          answer=SessionView, errors=(404,)),
    Route("POST", "/v1/sessions/{session_id}/tokens", post_session_token,
          "A join token for a live session's room", "write", body=Participant, answer=Join,
          status=201, errors=(404, 409)),
    Route("GET", "/v1/rooms/{room}/session", get_room_session, "A room's newest session",
          "read", answer=SessionView, errors=(404,)),
    Route("GET", "/v1/results", list_results, "Newest reports on the results stream", "read",
          query=CountQuery, answer=ResultPage),
    Route("GET", "/v1/dead-letters", list_dead_letters, "Newest dead letters", "read",
          query=DeadLetterQuery, answer=DeadLetterPage),
    Route("POST", "/v1/dead-letters/{entry_id}/replay", replay_dead_letter,
          "Replay a failed dispatch as a new session", "write", answer=ReplayAccepted,
          status=202, errors=(404, 409)),
]  # fmt: skip
