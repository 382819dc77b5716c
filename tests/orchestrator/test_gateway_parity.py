"""The gateway's LiveKit calls go on the wire as livekit-api's own client sends them: the same
Twirp method paths, request messages, content type and token grants, as the sim receives them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from aiohttp import web
from google.protobuf.message import Message
from livekit import api

from livekit_sim import LiveKitSim
from livekit_sim.auth import token_from_request, verify_video_grants
from orchestrator.gateway import LiveKitGateway
from tests.orchestrator.conftest import AGENT, API_KEY, API_SECRET
from tests.support.orchestrator_worker import settings_for
from tests.support.sim import running_sim

pytestmark = pytest.mark.integration

REQUESTS: dict[str, type[Message]] = {
    "livekit.AgentDispatchService/CreateDispatch": api.CreateAgentDispatchRequest,
    "livekit.AgentDispatchService/ListDispatch": api.ListAgentDispatchRequest,
    "livekit.AgentDispatchService/DeleteDispatch": api.DeleteAgentDispatchRequest,
    "livekit.RoomService/ListRooms": api.ListRoomsRequest,
    "livekit.RoomService/DeleteRoom": api.DeleteRoomRequest,
}
ROOM = "parity-room"
METADATA = '{"session_id": "S_parity"}'


@dataclass
class Received:
    """A Twirp request as it reached the sim."""

    path: str
    content_type: str
    request: Message
    grants: dict[str, Any]  # as the sim reads them
    subject: str
    issuer: str


@pytest.fixture
async def recording_sim() -> AsyncIterator[tuple[LiveKitSim, list[Received]]]:
    sim = running_sim()
    received: list[Received] = []

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path.removeprefix("/twirp/")
        if path in REQUESTS:
            token = token_from_request(request)
            assert token is not None
            claims = jwt.decode(token, API_SECRET, algorithms=["HS256"])
            received.append(
                Received(
                    path,
                    request.headers["Content-Type"],
                    REQUESTS[path].FromString(await request.read()),
                    verify_video_grants(token, sim.keys),
                    claims["sub"],
                    claims["iss"],
                )
            )
        return await handler(request)

    sim.app.middlewares.append(record)
    async with sim:
        yield sim, received


async def through_gateway(sim: LiveKitSim) -> str:
    """The gateway's calls, one of each: the dispatch id it made."""
    # Without our failover, CreateDispatch leaves LiveKit's default restart policy, as
    # livekit-api does (with it, JRP_NEVER: tests/orchestrator/test_dispatch.py).
    gateway = LiveKitGateway(settings_for("redis://127.0.0.1:9/0", sim, AGENT, max_restarts=0))
    try:
        dispatch = await gateway.create_dispatch(AGENT, ROOM, METADATA)
        assert dispatch.id in [d.id for d in await gateway.room_dispatches(ROOM)]
        assert await gateway.delete_dispatch(dispatch.id, ROOM)
        assert await gateway.delete_room(ROOM)
    finally:
        await gateway.aclose()
    return dispatch.id


async def through_livekit_api(sim: LiveKitSim) -> str:
    """The same calls through livekit-api's LiveKitAPI, in the same order."""
    async with api.LiveKitAPI(sim.url, API_KEY, API_SECRET) as lk:
        dispatch = await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=AGENT, room=ROOM, metadata=METADATA)
        )
        await lk.room.list_rooms(api.ListRoomsRequest(names=[ROOM]))
        assert dispatch.id in [d.id for d in await lk.agent_dispatch.list_dispatch(ROOM)]
        await lk.room.list_rooms(api.ListRoomsRequest(names=[ROOM]))
        await lk.agent_dispatch.delete_dispatch(dispatch.id, ROOM)
        await lk.room.delete_room(api.DeleteRoomRequest(room=ROOM))
    return dispatch.id


def as_made_by(received: list[Received], dispatch_id: str) -> list[Received]:
    """The requests with the dispatch id the client was given written as "AD_made", so two
    clients' requests compare equal."""
    for call in received:
        if getattr(call.request, "dispatch_id", None) == dispatch_id:
            call.request.dispatch_id = "AD_made"  # type: ignore[attr-defined]
    return received


async def test_the_gateway_sends_what_livekit_api_sends(
    recording_sim: tuple[LiveKitSim, list[Received]],
) -> None:
    sim, received = recording_sim
    made = await through_gateway(sim)
    ours = as_made_by(received[:], made)
    received.clear()
    made = await through_livekit_api(sim)
    theirs = as_made_by(received[:], made)

    assert [c.path for c in ours] == [
        "livekit.AgentDispatchService/CreateDispatch",
        "livekit.RoomService/ListRooms",
        "livekit.AgentDispatchService/ListDispatch",
        "livekit.RoomService/ListRooms",
        "livekit.AgentDispatchService/DeleteDispatch",
        "livekit.RoomService/DeleteRoom",
    ]
    # Token lifetimes differ on purpose (ours 600 s, livekit-api's 6 h); all else is alike.
    assert ours == theirs
    assert {c.content_type for c in ours} == {"application/protobuf"}
    assert [c.code for c in sim.calls] == ["ok"] * 12
