"""The orchestrator's only door to LiveKit: the calls it makes, with errors classified and
latency observed."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from livekit import api

from orchestrator import metrics
from orchestrator.errors import LiveKitError, classify
from orchestrator.settings import Settings

T = TypeVar("T")


class LiveKitGateway:
    """One HTTP session for the worker's lifetime; every call raises only LiveKitError."""

    def __init__(self, settings: Settings) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.livekit_timeout_s),
            connector=aiohttp.TCPConnector(limit=200),
        )
        self._api = api.LiveKitAPI(
            settings.http_livekit_url,
            settings.livekit_api_key,
            settings.livekit_api_secret.get_secret_value(),
            session=self._session,
        )

    async def aclose(self) -> None:
        await self._api.aclose()
        await self._session.close()

    async def _call(self, name: str, fn: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        code = "ok"
        try:
            return await fn()
        except Exception as exc:
            error = classify(exc, name)
            code = error.code
            raise error from exc
        finally:
            metrics.LIVEKIT_CALLS.labels(name, code).observe(time.perf_counter() - started)

    async def check_credentials(self) -> None:
        """Raise LiveKitError unless the server answers and accepts our key (ListRooms)."""
        await self._call(
            "ListRooms", lambda: self._api.room.list_rooms(api.ListRoomsRequest(names=["-"]))
        )

    async def create_dispatch(self, agent_name: str, room: str, metadata: str) -> api.AgentDispatch:
        request = api.CreateAgentDispatchRequest(
            agent_name=agent_name, room=room, metadata=metadata
        )
        return await self._call(
            "CreateDispatch", lambda: self._api.agent_dispatch.create_dispatch(request)
        )

    async def room_dispatches(self, room: str) -> list[api.AgentDispatch]:
        """The room's dispatches; [] when the room is not running.

        ListRooms comes first: CreateDispatch creates the room, so no room means no dispatch,
        and ListDispatch on a room that is not running takes ~3 s to answer `unavailable` on
        a real server, an answer an outage also gives. Errors of either call propagate.
        """
        if not await self.list_rooms([room]):
            return []
        return await self._call(
            "ListDispatch", lambda: self._api.agent_dispatch.list_dispatch(room)
        )

    async def delete_dispatch(self, dispatch_id: str, room: str) -> bool:
        """Delete a dispatch (its agent leaves); False when it or its room is already gone.

        ListRooms first, for the reason room_dispatches gives: a room that is not running
        would take LiveKit ~3 s to answer `unavailable`."""
        if not await self.list_rooms([room]):
            return False
        try:
            await self._call(
                "DeleteDispatch",
                lambda: self._api.agent_dispatch.delete_dispatch(dispatch_id, room),
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
                "DeleteRoom", lambda: self._api.room.delete_room(api.DeleteRoomRequest(room=room))
            )
        except LiveKitError as exc:
            if exc.code == "not_found":
                return False
            raise
        return True

    async def list_rooms(self, names: list[str] | None = None) -> list[api.Room]:
        response = await self._call(
            "ListRooms", lambda: self._api.room.list_rooms(api.ListRoomsRequest(names=names or []))
        )
        return list(response.rooms)
