"""`/rtc`: where SDK clients join rooms (livekit-server pkg/service/rtcservice.go, utils.go
ValidateConnectRequest, room.go createJoinResponseLocked).

- `/rtc` (v0, dual peer connection) is served; `/rtc/v1` (single peer connection) answers 404,
  which is what makes the Rust SDK fall back to `/rtc`, as against an older server;
- the token comes from `Authorization: Bearer` (or `access_token`); as on the real server a bad
  token is a plain-text 401 before the upgrade, a token without `roomJoin` a 401, no identity
  or no room a 400; `/rtc/validate` answers the same checks without joining;
- the JoinResponse carries what the SDK requires: `PA_`/`RM_` sids, other participants, ping
  interval 5 s and timeout 15 s, `subscriber_primary` when the participant may subscribe and
  `fast_publish` when it may publish; a token's `roomConfig` applies only if the join creates
  the room.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from livekit import api
from livekit.protocol import models, room, rtc

from livekit_sim.auth import InvalidToken, token_from_request, verify_token
from livekit_sim.rooms import PARTICIPANT_KINDS, RoomFullError
from livekit_sim.rtc.client import SdkParticipant
from livekit_sim.rtc.hub import RtcHub
from livekit_sim.workers import SERVER_VERSION

log = logging.getLogger(__name__)

PING_INTERVAL_S = 5
PING_TIMEOUT_S = 15
MAX_SIGNAL_MESSAGE_BYTES = 2 * 1024 * 1024  # limit.signal_message_size_limit
MAX_IDENTITY_BYTES = 256
MAX_ROOM_NAME_BYTES = 256


class RtcSignalService:
    """The HTTP side of `/rtc`: checks, then one `SdkParticipant` per accepted websocket."""

    def __init__(self, hub: RtcHub, keys: dict[str, str], server_info: models.ServerInfo) -> None:
        self.hub = hub
        self.keys = keys
        self.server_info = server_info
        self.sessions: set[SdkParticipant] = set()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/rtc", self.handle)
        app.router.add_get("/rtc/validate", self.validate)
        app.router.add_get("/rtc/v1", self.not_served)
        app.router.add_get("/rtc/v1/validate", self.not_served)

    async def not_served(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text="404 page not found")

    async def validate(self, request: web.Request) -> web.Response:
        self._check(request)
        return web.Response(text="success")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        room_name, claims = self._check(request)
        query = request.query
        kind = claims.kind if claims.kind in PARTICIPANT_KINDS else "standard"
        video = claims.video or api.VideoGrants()
        extra = models.ParticipantInfo(
            permission=models.ParticipantPermission(
                can_subscribe=video.can_subscribe,
                can_publish=video.can_publish,
                can_publish_data=video.can_publish_data,
                can_update_metadata=bool(video.can_update_own_metadata),
                hidden=bool(video.hidden),
                agent=bool(video.agent),
                can_subscribe_metrics=bool(video.can_subscribe_metrics),
            ),
            client_protocol=_int(query.get("client_protocol")),
            capabilities=_capabilities(query.get("capabilities", "")),
        )
        self.hub.registry.get_or_create(_create_request(room_name, claims))
        try:
            info = self.hub.registry.join(
                room_name,
                claims.identity,
                name=claims.name,
                kind=kind,
                metadata=claims.metadata,
                attributes=claims.attributes,
                active=False,
                extra=extra,
            )
        except RoomFullError as exc:
            raise web.HTTPServiceUnavailable(text=str(exc)) from exc
        sim_room = self.hub.registry.rooms[room_name]
        others = [
            p
            for p in sim_room.participants.values()
            if p.identity != info.identity and not p.permission.hidden
        ]
        join = rtc.JoinResponse(
            room=sim_room.snapshot(),
            participant=info,
            other_participants=others,
            server_version=SERVER_VERSION,
            server_info=self.server_info,
            subscriber_primary=info.permission.can_subscribe,
            fast_publish=info.permission.can_publish,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_TIMEOUT_S,
        )
        ws = web.WebSocketResponse(max_msg_size=MAX_SIGNAL_MESSAGE_BYTES)
        await ws.prepare(request)
        session = SdkParticipant(
            ws,
            hub=self.hub,
            room_name=room_name,
            info=info,
            auto_subscribe=query.get("auto_subscribe", "1") not in ("0", "false"),
        )
        self.hub.attach(room_name, session)
        self.sessions.add(session)
        log.info("participant %s joined room %s over /rtc", info.identity, room_name)
        try:
            await session.run(join)
        finally:
            self.sessions.discard(session)
        return ws

    async def aclose(self) -> None:
        """Tell every connected client the server is shutting down, and disconnect it."""
        await asyncio.gather(
            *(s.close(models.DisconnectReason.SERVER_SHUTDOWN) for s in list(self.sessions)),
            return_exceptions=True,
        )

    def _check(self, request: web.Request) -> tuple[str, api.access_token.Claims]:
        """ValidateConnectRequest: (room name, claims), or the real server's HTTP error."""
        try:
            token = token_from_request(request)
            claims = verify_token(token, self.keys) if token is not None else None
        except InvalidToken as exc:
            raise web.HTTPUnauthorized(text=str(exc)) from exc
        if claims is None or claims.video is None or not claims.video.room_join:
            raise web.HTTPUnauthorized(text="permissions denied")
        if not claims.identity:
            raise web.HTTPBadRequest(text="identity cannot be empty")
        if len(claims.identity.encode()) > MAX_IDENTITY_BYTES:
            raise web.HTTPBadRequest(
                text=f"participant identity length exceeds limits: max length {MAX_IDENTITY_BYTES}"
            )
        room_name = claims.video.room or request.query.get("room", "")
        if not room_name:
            raise web.HTTPBadRequest(text="no room name")
        if len(room_name.encode()) > MAX_ROOM_NAME_BYTES:
            raise web.HTTPBadRequest(
                text=f"room name length exceeds limits: max length {MAX_ROOM_NAME_BYTES}"
            )
        return room_name, claims


def _create_request(room_name: str, claims: api.access_token.Claims) -> room.CreateRoomRequest:
    req = room.CreateRoomRequest(name=room_name)
    config = claims.room_config
    if config is not None:
        req.empty_timeout = config.empty_timeout
        req.departure_timeout = config.departure_timeout
        req.max_participants = config.max_participants
        req.metadata = config.metadata
        req.agents.extend(config.agents)
    return req


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _capabilities(text: str) -> list[str]:
    """The client's advertised capabilities, by enum name (unknown names are dropped)."""
    names = models.ClientInfo.Capability.keys()
    return [name for name in text.split(",") if name in names]
