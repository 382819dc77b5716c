"""The orchestrator's only door to LiveKit: the calls it makes, with errors classified and
latency observed.

Requests go through `orchestrator.gateway.twirp` (livekit-api's wire format, headers and errors, on
lighter HTTP machinery), each with a fresh access token (`orchestrator.gateway.tokens`).
"""

from __future__ import annotations

import json
import time
from typing import Any, TypeVar

from google.protobuf.message import Message
from livekit import api
from livekit.protocol import models
from livekit.protocol.agent_dispatch import JRP_NEVER, JRP_ON_FAILURE

from orchestrator import metrics
from orchestrator.errors import LiveKitError
from orchestrator.gateway.errors import classify
from orchestrator.gateway.tokens import ApiTokenSigner
from orchestrator.gateway.twirp import TwirpClient
from orchestrator.settings import Settings

T = TypeVar("T", bound=Message)
DISPATCH = "AgentDispatchService"
ROOMS = "RoomService"
# Calls that change nothing more when made twice, so a transport may send them again; not
# CreateDispatch, which would put a second agent in the room.
REPEATABLE = frozenset(
    {"ListRooms", "ListDispatch", "DeleteDispatch", "DeleteRoom", "ListParticipants"}
)
NOT_PEOPLE = frozenset({models.ParticipantInfo.Kind.AGENT, models.ParticipantInfo.Kind.EGRESS})
"""Participants that are not people waiting for an agent: agents (a dead one may linger,
listed, until its peer connection times out) and recorders."""


class LiveKitGateway:
    """Kept-alive connections for the worker's lifetime; every call raises only LiveKitError."""

    def __init__(self, settings: Settings) -> None:
        self._client = TwirpClient(settings.http_livekit_url, timeout_s=settings.livekit_timeout_s)
        self._tokens = ApiTokenSigner(
            settings.livekit_api_key, settings.livekit_api_secret.get_secret_value()
        )
        self._we_restart = settings.max_restarts > 0

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(
        self, service: str, method: str, request: Message, response: type[T], **video: Any
    ) -> T:
        started = time.perf_counter()
        code = "ok"
        try:
            return await self._client.call(
                service,
                method,
                request,
                response,
                self._tokens.authorization(**video),
                repeatable=method in REPEATABLE,
            )
        except Exception as exc:
            error = classify(exc, method)
            code = error.code
            raise error from exc
        finally:
            metrics.LIVEKIT_CALLS.labels(method, code).observe(time.perf_counter() - started)

    async def check_credentials(self) -> None:
        """Raise LiveKitError unless the server answers and accepts our key (ListRooms)."""
        await self.list_rooms(["-"])

    async def create_dispatch(
        self, agent_name: str, room: str, metadata: str, restart_policy: str | None = None
    ) -> api.AgentDispatch:
        """`restart_policy`: the event's. LiveKit is asked to restart a failed job itself
        (JRP_ON_FAILURE: LiveKit Cloud does; a self-hosted server never does) only where our
        failover does not (LKD_MAX_RESTARTS=0) and the event allows it: one restarter only,
        or a death would bring two agents."""
        restarts = restart_policy != "never" and not self._we_restart
        request = api.CreateAgentDispatchRequest(
            agent_name=agent_name,
            room=room,
            metadata=metadata,
            restart_policy=JRP_ON_FAILURE if restarts else JRP_NEVER,
        )
        return await self._call(
            DISPATCH, "CreateDispatch", request, api.AgentDispatch, roomAdmin=True, room=room
        )

    async def room_dispatches(self, room: str) -> list[api.AgentDispatch]:
        """The room's dispatches; [] when the room is not running.

        ListRooms comes first: CreateDispatch creates the room, so no room means no dispatch,
        and ListDispatch on a room that is not running takes ~3 s to answer `unavailable` on
        a real server, an answer an outage also gives. Errors of either call propagate.
        """
        if not await self.list_rooms([room]):
            return []
        return await self.running_room_dispatches(room)

    async def running_room_dispatches(self, room: str) -> list[api.AgentDispatch]:
        """The dispatches of a room just listed as running (no ListRooms first)."""
        response = await self._call(
            DISPATCH,
            "ListDispatch",
            api.ListAgentDispatchRequest(room=room),
            api.ListAgentDispatchResponse,
            roomAdmin=True,
            room=room,
        )
        return list(response.agent_dispatches)

    async def session_dispatches(self, room: str, session_id: str) -> list[api.AgentDispatch]:
        """The room's dispatches made for `session_id` (the session id their metadata
        carries), oldest first."""
        found = [
            d for d in await self.room_dispatches(room) if dispatch_session_id(d) == session_id
        ]
        return sorted(found, key=lambda d: d.state.created_at)

    async def session_dispatch(self, room: str, session_id: str) -> api.AgentDispatch | None:
        """A dispatch made for `session_id` in `room`, if one stands."""
        found = await self.session_dispatches(room, session_id)
        return found[0] if found else None

    async def delete_dispatch(self, dispatch_id: str, room: str) -> bool:
        """Delete a dispatch (its agent leaves); False when it or its room is already gone.

        ListRooms first, for the reason room_dispatches gives: a room that is not running
        would take LiveKit ~3 s to answer `unavailable`."""
        if not await self.list_rooms([room]):
            return False
        request = api.DeleteAgentDispatchRequest(dispatch_id=dispatch_id, room=room)
        try:
            await self._call(
                DISPATCH, "DeleteDispatch", request, api.AgentDispatch, roomAdmin=True, room=room
            )
        except LiveKitError as exc:
            if exc.code in ("not_found", "unavailable"):
                return False
            raise
        return True

    async def delete_room(self, room: str) -> bool:
        """Delete a room (everyone leaves); False when it does not exist."""
        try:
            await self._call(
                ROOMS,
                "DeleteRoom",
                api.DeleteRoomRequest(room=room),
                api.DeleteRoomResponse,
                roomCreate=True,
            )
        except LiveKitError as exc:
            if exc.code == "not_found":
                return False
            raise
        return True

    async def room_people(self, room: str) -> list[models.ParticipantInfo]:
        """Who is in the room now, by LiveKit, other than agents and recorders ([] for a room
        that is not running)."""
        try:
            response = await self._call(
                ROOMS,
                "ListParticipants",
                api.ListParticipantsRequest(room=room),
                api.ListParticipantsResponse,
                roomAdmin=True,
                room=room,
            )
        except LiveKitError as exc:
            if exc.code == "not_found":
                return []
            raise
        return [p for p in response.participants if p.kind not in NOT_PEOPLE]

    async def list_rooms(self, names: list[str] | None = None) -> list[api.Room]:
        response = await self._call(
            ROOMS,
            "ListRooms",
            api.ListRoomsRequest(names=names or []),
            api.ListRoomsResponse,
            roomList=True,
        )
        return list(response.rooms)


def dispatch_session_id(dispatch: api.AgentDispatch) -> str | None:
    """The session id a dispatch carries in its metadata, if it is one of ours."""
    try:
        value = json.loads(dispatch.metadata).get("session_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
