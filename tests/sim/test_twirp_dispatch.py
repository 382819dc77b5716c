"""AgentDispatchService against the sim, through the real livekit-api client."""

from __future__ import annotations

import re
import time

import pytest
from livekit import api

from livekit_sim import LiveKitSim

pytestmark = pytest.mark.integration

DISPATCH_ID = re.compile(r"^AD_[23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz]{12}$")
ROOM_ID = re.compile(r"^RM_[23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz]{12}$")


async def test_create_dispatch_returns_the_dispatch_and_auto_creates_the_room(
    sim: LiveKitSim, lkapi: api.LiveKitAPI
) -> None:
    before_ns = time.time_ns()
    dispatch = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(
            agent_name="support", room="call-1", metadata='{"k": 1}', attributes={"a": "b"}
        )
    )
    assert DISPATCH_ID.match(dispatch.id)
    assert (dispatch.agent_name, dispatch.room, dispatch.metadata) == (
        "support",
        "call-1",
        '{"k": 1}',
    )
    assert dict(dispatch.attributes) == {"a": "b"}
    assert before_ns <= dispatch.state.created_at <= time.time_ns()
    assert list(dispatch.state.jobs) == []

    rooms = (await lkapi.room.list_rooms(api.ListRoomsRequest(names=["call-1"]))).rooms
    assert [r.name for r in rooms] == ["call-1"]
    assert ROOM_ID.match(rooms[0].sid)
    assert (rooms[0].empty_timeout, rooms[0].departure_timeout) == (300, 20)


async def test_auto_created_room_gets_the_default_dispatch_too(lkapi: api.LiveKitAPI) -> None:
    created = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="support", room="call-2")
    )
    listed = await lkapi.agent_dispatch.list_dispatch("call-2")
    assert sorted(d.agent_name for d in listed) == ["", "support"]
    assert created.id in {d.id for d in listed}


async def test_two_create_dispatch_calls_make_two_dispatches(
    sim: LiveKitSim, lkapi: api.LiveKitAPI
) -> None:
    request = api.CreateAgentDispatchRequest(agent_name="support", room="call-3", metadata="x")
    first = await lkapi.agent_dispatch.create_dispatch(request)
    second = await lkapi.agent_dispatch.create_dispatch(request)
    assert first.id != second.id
    named = [d for d in await lkapi.agent_dispatch.list_dispatch("call-3") if d.agent_name]
    assert sorted(d.id for d in named) == sorted([first.id, second.id])
    assert len(sim.calls_to("AgentDispatchService/CreateDispatch")) == 2
    assert [c.dispatch_id for c in sim.calls_to("AgentDispatchService/CreateDispatch")] == [
        first.id,
        second.id,
    ]


async def test_get_dispatch_filters_by_id(lkapi: api.LiveKitAPI) -> None:
    created = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="support", room="call-4")
    )
    found = await lkapi.agent_dispatch.get_dispatch(created.id, "call-4")
    assert found is not None
    assert found.id == created.id
    assert await lkapi.agent_dispatch.get_dispatch("AD_unknownunkno", "call-4") is None


async def test_delete_dispatch_removes_it(lkapi: api.LiveKitAPI) -> None:
    created = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="support", room="call-5", metadata="m")
    )
    deleted = await lkapi.agent_dispatch.delete_dispatch(created.id, "call-5")
    assert (deleted.id, deleted.metadata) == (created.id, "m")
    remaining = await lkapi.agent_dispatch.list_dispatch("call-5")
    assert created.id not in {d.id for d in remaining}


async def test_delete_unknown_dispatch_is_not_found(lkapi: api.LiveKitAPI) -> None:
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="call-6"))
    with pytest.raises(api.ServerError) as err:
        await lkapi.agent_dispatch.delete_dispatch("AD_doesnotexist", "call-6")
    assert (err.value.code, err.value.status, err.value.message) == (
        "not_found",
        404,
        "dispatch ID not found",
    )


@pytest.mark.parametrize("call", ["list", "delete"])
async def test_dispatch_calls_on_a_room_not_running_are_unavailable(
    sim: LiveKitSim, lkapi: api.LiveKitAPI, call: str
) -> None:
    started = time.monotonic()
    calls = {
        "list": lambda: lkapi.agent_dispatch.list_dispatch("no-such-room"),
        "delete": lambda: lkapi.agent_dispatch.delete_dispatch("AD_doesnotexist", "no-such-room"),
    }
    with pytest.raises(api.ServerError) as err:
        await calls[call]()
    assert (err.value.code, err.value.status, err.value.message) == (
        "unavailable",
        503,
        "no response from servers",
    )
    assert time.monotonic() - started >= 0.05  # the fixture's missing_room_delay_s
    assert "no-such-room" not in sim.rooms


async def test_metadata_over_512_kib_is_rejected(lkapi: api.LiveKitAPI) -> None:
    limit = 512 * 1024
    ok = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(room="call-7", metadata="x" * limit)
    )
    assert len(ok.metadata) == limit
    with pytest.raises(api.ServerError) as err:
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(room="call-7", metadata="x" * (limit + 1))
        )
    assert (err.value.code, err.value.status, err.value.message) == (
        "invalid_argument",
        400,
        "metadata size exceeds limits",
    )


async def test_attributes_over_64_kib_are_rejected(lkapi: api.LiveKitAPI) -> None:
    with pytest.raises(api.ServerError) as err:
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(room="call-8", attributes={"k": "v" * 64 * 1024})
        )
    assert (err.value.code, err.value.message) == (
        "invalid_argument",
        "attribute size exceeds limits",
    )


async def test_create_dispatch_accepts_a_room_name_over_256_bytes(lkapi: api.LiveKitAPI) -> None:
    dispatch = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(room="r" * 300)
    )
    assert dispatch.room == "r" * 300


async def test_invalid_deployment_is_rejected(lkapi: api.LiveKitAPI) -> None:
    with pytest.raises(api.ServerError) as err:
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(room="call-9", deployment="d" * 65)
        )
    assert (err.value.code, err.value.message) == (
        "invalid_argument",
        "deployment exceeds 64 bytes",
    )
