"""Fault injection per endpoint: latency, Twirp error answers, dropped connections."""

from __future__ import annotations

import time

import aiohttp
import pytest
from livekit import api

from livekit_sim import LiveKitSim

CREATE = "AgentDispatchService/CreateDispatch"


async def test_latency_delays_only_the_chosen_endpoint(
    sim: LiveKitSim, lkapi: api.LiveKitAPI
) -> None:
    sim.faults.set(CREATE, latency_ms=300)
    started = time.monotonic()
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="f1"))
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    await lkapi.room.list_rooms(api.ListRoomsRequest())
    assert time.monotonic() - started < 0.3


async def test_error_rate_answers_with_the_chosen_code(
    sim: LiveKitSim, lkapi: api.LiveKitAPI
) -> None:
    sim.faults.set(CREATE, error_rate=1.0, error_code="resource_exhausted", error_msg="slow down")
    with pytest.raises(api.TwirpError) as err:
        await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="f2"))
    assert (err.value.code, err.value.status, err.value.message) == (
        "resource_exhausted",
        429,
        "slow down",
    )
    assert "f2" not in sim.rooms
    assert [c.code for c in sim.calls_to(CREATE)] == ["resource_exhausted"]
    sim.faults.clear()
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="f2"))
    assert "f2" in sim.rooms


async def test_partial_error_rate(sim: LiveKitSim, lkapi: api.LiveKitAPI) -> None:
    sim.faults.rng.seed(7)
    sim.faults.set("*", error_rate=0.5, error_code="unavailable")
    outcomes = []
    for i in range(40):
        try:
            await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room=f"p{i}"))
            outcomes.append("ok")
        except api.TwirpError as exc:
            outcomes.append(f"{exc.code} {exc.status}")
    assert 5 < outcomes.count("unavailable 503") < 35
    assert set(outcomes) == {"ok", "unavailable 503"}
    assert outcomes.count("ok") == len(sim.rooms)


async def test_dropped_connection_gets_no_answer(sim: LiveKitSim, lkapi: api.LiveKitAPI) -> None:
    sim.faults.set(CREATE, drop_rate=1.0)
    with pytest.raises(aiohttp.ClientError):
        await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="f3"))
    assert "f3" not in sim.rooms
    assert [c.code for c in sim.calls_to(CREATE)] == ["dropped"]


async def test_faults_over_http(sim: LiveKitSim, lkapi: api.LiveKitAPI) -> None:
    async with aiohttp.ClientSession(sim.url) as http:
        rule = {"error_rate": 1.0, "error_code": "internal", "error_msg": "boom"}
        async with http.post("/_sim/faults", json={"twirp": {CREATE: rule}}) as resp:
            assert resp.status == 200
        with pytest.raises(api.TwirpError) as err:
            await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="f4"))
        assert (err.value.code, err.value.status) == ("internal", 500)
        async with http.post("/_sim/faults", json={"twirp": {CREATE: {"nope": 1}}}) as resp:
            assert resp.status == 400
        async with http.post(
            "/_sim/faults", json={"clear": True, "workers_never_answer": True}
        ) as resp:
            assert (await resp.json()) == {"twirp": {}, "workers_never_answer": True}
    assert sim.faults.workers_never_answer
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="f4"))
