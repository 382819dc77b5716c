"""The Twirp APIs (`/twirp/livekit.RoomService/*`, `/twirp/livekit.AgentDispatchService/*`).

Requests in protobuf or JSON (DiscardUnknown); responses in the request's encoding, JSON with
proto field names and defaults emitted; errors as Twirp JSON bodies with the HTTP status of
their code. Content types are exactly those of Twirp's generated Go code: `application/json`
and `application/protobuf`, no charset. Authentication and error texts follow
pkg/service/{auth,roomservice,agent_dispatch_service}.go; see livekit_sim/README.md for the
deviations.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import agent_dispatch, models, room

from livekit_sim import auth
from livekit_sim.faults import Faults
from livekit_sim.rooms import ParticipantNotFoundError, RoomRegistry

MAX_METADATA_BYTES = 512 * 1024
MAX_ATTRIBUTES_BYTES = 64 * 1024
MAX_ROOM_NAME_BYTES = 256
MAX_DEPLOYMENT_BYTES = 64
MAX_REQUEST_BODY_BYTES = 10 * 1024 * 1024

JSON = "application/json"
PROTOBUF = "application/protobuf"

HTTP_STATUS = {
    "canceled": 408,
    "unknown": 500,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
}


class TwirpError(Exception):
    """An error answered as a Twirp JSON body."""

    def __init__(self, code: str, msg: str, meta: Mapping[str, str] | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.meta = dict(meta or {})


def twirp_error_response(
    code: str, msg: str, meta: Mapping[str, str] | None = None
) -> web.Response:
    """A Twirp error answer: the code's HTTP status, a compact JSON body, `application/json`."""
    body: dict[str, Any] = {"code": code, "msg": msg}
    if meta:
        body["meta"] = dict(meta)
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return _answer(HTTP_STATUS.get(code, 500), text.encode(), JSON)


def _answer(status: int, body: bytes, content_type: str) -> web.Response:
    # Exactly the type Twirp's Go code sets: `text=` would make aiohttp append a charset, and
    # LiveKit's Node SDK only parses error bodies whose type is exactly "application/json".
    return web.Response(status=status, body=body, headers={"Content-Type": content_type})


def _plain(status: int, text: str) -> web.Response:
    # What Go's net/http sniffs for the real server's HandleError text bodies.
    return web.Response(status=status, text=text, content_type="text/plain", charset="utf-8")


def _go_quote(value: str) -> str:
    """Close to Go's %q: a double-quoted string with JSON-like escapes."""
    return json.dumps(value, ensure_ascii=False)


def _bad_route(msg: str, request: web.Request) -> TwirpError:
    return TwirpError("bad_route", msg, {"twirp_invalid_route": f"{request.method} {request.path}"})


@dataclass(slots=True)
class CallRecord:
    """One Twirp call that reached the sim."""

    method: str  # "AgentDispatchService/CreateDispatch"
    room: str
    at_ns: int  # arrival, unix ns
    # "ok", a Twirp code, "dropped", "lost_answer" (took effect, answered with an error), or
    # "http_401"/"http_413" for plain-text answers
    code: str
    dispatch_id: str = ""


Video = Mapping[str, Any] | None
Handler = Callable[[Video, Any], Awaitable[Message]]


def _denied() -> TwirpError:
    return TwirpError("unauthenticated", auth.PERMISSION_DENIED)


def _attributes_size(attributes: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items())


def _check_deployment(deployment: str) -> None:
    if len(deployment.encode()) > MAX_DEPLOYMENT_BYTES:
        raise TwirpError("invalid_argument", "deployment exceeds 64 bytes")
    if "_" in deployment or any(c.isspace() or not c.isprintable() for c in deployment):
        raise TwirpError("invalid_argument", "deployment contains invalid characters")


class TwirpService:
    """Serves both Twirp services over one RoomRegistry, logging every call."""

    def __init__(
        self,
        rooms: RoomRegistry,
        keys: Mapping[str, str],
        faults: Faults,
        *,
        missing_room_delay_s: float,
        max_call_log: int,
    ) -> None:
        self.rooms = rooms
        self.calls: deque[CallRecord] = deque(maxlen=max_call_log)
        self.counts: dict[str, int] = {}
        self._keys = keys
        self._faults = faults
        self._missing_room_delay_s = missing_room_delay_s
        self._methods: dict[str, tuple[type[Message], Handler]] = {
            "livekit.RoomService/CreateRoom": (room.CreateRoomRequest, self.create_room),
            "livekit.RoomService/ListRooms": (room.ListRoomsRequest, self.list_rooms),
            "livekit.RoomService/DeleteRoom": (room.DeleteRoomRequest, self.delete_room),
            "livekit.RoomService/ListParticipants": (
                room.ListParticipantsRequest,
                self.list_participants,
            ),
            "livekit.RoomService/RemoveParticipant": (
                room.RoomParticipantIdentity,
                self.remove_participant,
            ),
            "livekit.AgentDispatchService/CreateDispatch": (
                agent_dispatch.CreateAgentDispatchRequest,
                self.create_dispatch,
            ),
            "livekit.AgentDispatchService/ListDispatch": (
                agent_dispatch.ListAgentDispatchRequest,
                self.list_dispatch,
            ),
            "livekit.AgentDispatchService/DeleteDispatch": (
                agent_dispatch.DeleteAgentDispatchRequest,
                self.delete_dispatch,
            ),
        }

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/twirp/{path:.*}", self.handle)

    def _record(
        self, method: str, room_name: str, at_ns: int, code: str, dispatch_id: str = ""
    ) -> None:
        self.calls.append(CallRecord(method, room_name, at_ns, code, dispatch_id))
        key = f"{method} {code}"
        self.counts[key] = self.counts.get(key, 0) + 1

    async def handle(self, request: web.Request) -> web.StreamResponse:
        at_ns = time.time_ns()
        path = request.match_info["path"]
        method = path.removeprefix("livekit.")
        room_name = ""
        try:
            dropped = await self._faults_before(method, request)
            if dropped is not None:
                self._record(method, "", at_ns, "dropped")
                return dropped
            # The real server's RequestBodyLimiter runs before its authentication middleware.
            if (
                request.content_length is not None
                and request.content_length > MAX_REQUEST_BODY_BYTES
            ):
                self._record(method, "", at_ns, "http_413")
                return _plain(413, "request body too large")
            try:
                video = auth.request_video_grants(request, self._keys)
            except web.HTTPUnauthorized as exc:
                self._record(method, "", at_ns, "http_401")
                return _plain(401, exc.text or "")
            entry = self._methods.get(path)
            if request.method != "POST":
                raise _bad_route(
                    f"unsupported method {_go_quote(request.method)} (only POST is allowed)",
                    request,
                )
            if entry is None:
                raise _bad_route(f"no handler for path {_go_quote(request.path)}", request)
            req_cls, handler = entry
            as_json = self._is_json(request)
            req = self._decode(req_cls, await self._read_body(request, as_json), as_json)
            room_name = getattr(req, "room", "") or getattr(req, "name", "")
            result = await handler(video, req)
        except TwirpError as exc:
            self._record(method, room_name, at_ns, exc.code)
            return twirp_error_response(exc.code, exc.msg, exc.meta)
        dispatch_id = result.id if isinstance(result, agent_dispatch.AgentDispatch) else ""
        fault = self._faults.for_endpoint(method) if self._faults.twirp else None
        lost = fault is not None and self._faults.roll(fault.lost_answer_rate)
        self._record(method, room_name, at_ns, "lost_answer" if lost else "ok", dispatch_id)
        if lost:
            self._faults.count("lost_answer")
        if (
            fault is not None
            and fault.response_delay_ms > 0
            and self._faults.roll(fault.response_delay_rate)
        ):
            # The call took effect; its answer is late (a slow network, a lost reply).
            self._faults.count("delayed")
            await asyncio.sleep(fault.response_delay_ms / 1000)
        if fault is not None and lost:
            return twirp_error_response(fault.error_code, fault.error_msg)
        if as_json:
            text = json_format.MessageToJson(
                result,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
                indent=None,
            )
            return _answer(200, text.encode(), JSON)
        return _answer(200, result.SerializeToString(), PROTOBUF)

    async def _faults_before(self, method: str, request: web.Request) -> web.Response | None:
        """Apply the endpoint's latency, drop and error faults before the call is handled.

        Returns the (never sent) answer of a dropped connection; raises the injected error.
        """
        fault = self._faults.for_endpoint(method) if self._faults.twirp else None
        if fault is None:
            return None
        if fault.latency_ms > 0:
            await asyncio.sleep(fault.latency_ms / 1000)
        if self._faults.roll(fault.drop_rate):
            self._faults.count("dropped")
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=499)
        if self._faults.roll(fault.error_rate):
            self._faults.count("error")
            raise TwirpError(fault.error_code, fault.error_msg)
        return None

    @staticmethod
    def _is_json(request: web.Request) -> bool:
        """The request's encoding, from its Content-Type's media type (parameters ignored)."""
        header = request.headers.get("Content-Type", "")
        media_type = header.split(";", 1)[0].strip().lower()
        if media_type == PROTOBUF:
            return False
        if media_type == JSON:
            return True
        raise _bad_route(f"unexpected Content-Type: {_go_quote(header)}", request)

    @staticmethod
    async def _read_body(request: web.Request, as_json: bool) -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            # A body with no (or a false) Content-Length that outgrows the limit: the real
            # server's MaxBytesReader fails Twirp's read, which answers `malformed`.
            msg = (
                "the json request could not be decoded"
                if as_json
                else "failed to read request body"
            )
            raise TwirpError("malformed", msg) from exc

    @staticmethod
    def _decode(req_cls: type[Message], body: bytes, as_json: bool) -> Message:
        req = req_cls()
        try:
            if as_json:
                json_format.Parse(body or b"{}", req, ignore_unknown_fields=True)
            else:
                req.ParseFromString(body)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
            kind = "json" if as_json else "protobuf"
            raise TwirpError("malformed", f"the {kind} request could not be decoded") from exc
        return req

    async def _missing_room(self) -> TwirpError:
        # psrpc to a room topic nobody serves: 3 attempts x 1 s, then ErrNoResponse.
        await asyncio.sleep(self._missing_room_delay_s)
        return TwirpError("unavailable", "no response from servers")

    # -- RoomService -----------------------------------------------------------------------

    async def create_room(self, video: Video, req: room.CreateRoomRequest) -> models.Room:
        if not auth.has_grant(video, "roomCreate"):
            raise _denied()
        if len(req.name.encode()) > MAX_ROOM_NAME_BYTES:
            raise TwirpError("invalid_argument", "room name length exceeds limits")
        too_big = "metadata size exceeds limits"
        meta = {"argument": too_big}
        if len(req.metadata.encode()) > MAX_METADATA_BYTES:
            raise TwirpError("invalid_argument", f"{too_big} {MAX_METADATA_BYTES}", meta)
        for rad in req.agents:
            if len(rad.metadata.encode()) > MAX_METADATA_BYTES:
                raise TwirpError("invalid_argument", f"{too_big} {MAX_METADATA_BYTES}", meta)
            if _attributes_size(rad.attributes) > MAX_ATTRIBUTES_BYTES:
                arg = "attribute size exceeds limits"
                raise TwirpError(
                    "invalid_argument", f"{arg} {MAX_ATTRIBUTES_BYTES}", {"argument": arg}
                )
        return self.rooms.get_or_create(req).snapshot()

    async def list_rooms(self, video: Video, req: room.ListRoomsRequest) -> room.ListRoomsResponse:
        if not auth.has_grant(video, "roomList"):
            raise _denied()
        names = set(req.names)
        return room.ListRoomsResponse(
            rooms=[r.snapshot() for n, r in self.rooms.rooms.items() if not names or n in names]
        )

    async def delete_room(
        self, video: Video, req: room.DeleteRoomRequest
    ) -> room.DeleteRoomResponse:
        if not auth.has_grant(video, "roomCreate"):
            raise _denied()
        if not self.rooms.close(req.room):
            raise TwirpError("not_found", "requested room does not exist")
        return room.DeleteRoomResponse()

    async def list_participants(
        self, video: Video, req: room.ListParticipantsRequest
    ) -> room.ListParticipantsResponse:
        if not auth.has_admin(video, req.room):
            raise _denied()
        sim_room = self.rooms.rooms.get(req.room)
        participants = list(sim_room.participants.values()) if sim_room else []
        return room.ListParticipantsResponse(participants=participants)

    async def remove_participant(
        self, video: Video, req: room.RoomParticipantIdentity
    ) -> room.RemoveParticipantResponse:
        if not auth.has_admin(video, req.room):
            raise _denied()
        try:
            self.rooms.leave(req.room, req.identity)
        except ParticipantNotFoundError as exc:
            raise TwirpError("not_found", "participant does not exist") from exc
        return room.RemoveParticipantResponse()

    # -- AgentDispatchService --------------------------------------------------------------

    async def create_dispatch(
        self, video: Video, req: agent_dispatch.CreateAgentDispatchRequest
    ) -> agent_dispatch.AgentDispatch:
        if not auth.has_admin(video, req.room):
            raise _denied()
        _check_deployment(req.deployment)
        if len(req.metadata.encode()) > MAX_METADATA_BYTES:
            raise TwirpError("invalid_argument", "metadata size exceeds limits")
        if _attributes_size(req.attributes) > MAX_ATTRIBUTES_BYTES:
            raise TwirpError("invalid_argument", "attribute size exceeds limits")
        return self.rooms.create_dispatch(req)

    async def list_dispatch(
        self, video: Video, req: agent_dispatch.ListAgentDispatchRequest
    ) -> agent_dispatch.ListAgentDispatchResponse:
        if not auth.has_admin(video, req.room):
            raise _denied()
        sim_room = self.rooms.rooms.get(req.room)
        if sim_room is None:
            raise await self._missing_room()
        dispatches = [
            d
            for d in sim_room.dispatches.values()
            if not req.dispatch_id or d.id == req.dispatch_id
        ]
        return agent_dispatch.ListAgentDispatchResponse(agent_dispatches=dispatches)

    async def delete_dispatch(
        self, video: Video, req: agent_dispatch.DeleteAgentDispatchRequest
    ) -> agent_dispatch.AgentDispatch:
        if not auth.has_admin(video, req.room):
            raise _denied()
        sim_room = self.rooms.rooms.get(req.room)
        if sim_room is None:
            raise await self._missing_room()
        if req.dispatch_id not in sim_room.dispatches:
            raise TwirpError("not_found", "dispatch ID not found")
        return self.rooms.delete_dispatch(sim_room, req.dispatch_id)
