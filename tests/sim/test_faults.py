"""Fault injection: latency, Twirp error answers, dropped connections, lost and delayed
answers, dispatches never offered, workers that never answer; counted by kind, seeded."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from livekit import api

from livekit_sim import LiveKitSim
from livekit_sim.faults import Faults, TwirpFault
from tests.sim.conftest import API_KEY, API_SECRET
from tests.sim.protocol_worker import ScriptedWorker
from tests.support.sim import running_sim
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

CREATE = "AgentDispatchService/CreateDispatch"


StartWorker = Callable[[str], Awaitable[ScriptedWorker]]


@pytest.fixture
async def start_worker(sim: LiveKitSim) -> AsyncIterator[StartWorker]:
    """Starts protocol-level workers for an agent name; all disconnect after the test."""
    started: list[ScriptedWorker] = []

    async def start(agent_name: str) -> ScriptedWorker:
        started.append(await ScriptedWorker(sim.ws_url, API_KEY, API_SECRET, agent_name).start())
        return started[-1]

    yield start
    for worker in started:
        await worker.aclose()


async def timed_create(lkapi: api.LiveKitAPI, room: str) -> float:
    """Seconds one CreateDispatch took, answer included."""
    started = time.monotonic()
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room=room))
    return time.monotonic() - started


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
    with pytest.raises(api.ServerError) as err:
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
        except api.ServerError as exc:
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
        with pytest.raises(api.ServerError) as err:
            await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="f4"))
        assert (err.value.code, err.value.status) == ("internal", 500)
        async with http.post("/_sim/faults", json={"twirp": {CREATE: {"nope": 1}}}) as resp:
            assert resp.status == 400
        async with http.post(
            "/_sim/faults", json={"clear": True, "workers_never_answer": True}
        ) as resp:
            answer = await resp.json()
            assert (answer["twirp"], answer["workers_never_answer"]) == ({}, True)
            assert answer["injected"]["error"] == 1
    assert sim.faults.workers_never_answer
    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="f4"))


async def test_lost_answer_takes_effect_but_answers_an_error(
    sim: LiveKitSim, lkapi: api.LiveKitAPI, start_worker: StartWorker
) -> None:
    worker = await start_worker("lost")
    sim.faults.set(CREATE, lost_answer_rate=1.0, error_code="unavailable", error_msg="gone")
    with pytest.raises(api.ServerError) as err:
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(room="f5", agent_name="lost")
        )
    assert (err.value.code, err.value.status, err.value.message) == (
        "unavailable",
        503,
        "gone",
    )
    [call] = sim.calls_to(CREATE)
    assert (call.code, call.room) == ("lost_answer", "f5")
    # The dispatch exists and its job was launched, although the client saw an error.
    listed = await lkapi.agent_dispatch.list_dispatch("f5")
    assert call.dispatch_id in [d.id for d in listed]
    await eventually(lambda: worker.assigned, what="the lost dispatch's job")
    assert [j.dispatch_id for j in worker.assigned] == [call.dispatch_id]
    assert sim.faults.injected["lost_answer"] == 1


async def test_response_delay_rate_delays_only_that_share(
    sim: LiveKitSim, lkapi: api.LiveKitAPI
) -> None:
    sim.faults.set(CREATE, response_delay_ms=300, response_delay_rate=0.0)
    assert await timed_create(lkapi, "d0") < 0.3
    sim.faults.set(CREATE, response_delay_ms=300)  # the default rate: every answer
    assert await timed_create(lkapi, "d1") >= 0.3
    assert sim.faults.injected["delayed"] == 1

    sim.faults.seed(3)
    sim.faults.set(CREATE, response_delay_ms=250, response_delay_rate=0.5)
    slow = [await timed_create(lkapi, f"d-{i}") >= 0.25 for i in range(10)]
    assert 0 < slow.count(True) < 10
    assert sim.faults.injected["delayed"] == 1 + slow.count(True)
    assert {c.code for c in sim.calls_to(CREATE)} == {"ok"}


async def test_unoffered_dispatch_is_never_offered_nor_retried(
    sim: LiveKitSim, lkapi: api.LiveKitAPI, start_worker: StartWorker
) -> None:
    worker = await start_worker("u")
    sim.faults.unoffered_rate = 1.0
    unoffered = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(room="f6", agent_name="u")
    )
    sim.faults.unoffered_rate = 0.0
    offered = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(room="f6", agent_name="u")
    )
    await sim.settle()

    assert [j.dispatch_id for j in worker.offered] == [offered.id]
    jobs = {d.id: list(d.state.jobs) for d in await lkapi.agent_dispatch.list_dispatch("f6")}
    assert jobs[unoffered.id] == []
    assert len(jobs[offered.id]) == 1
    assert sim.faults.injected["unoffered"] == 1


async def test_partial_unoffered_rate(
    sim: LiveKitSim, lkapi: api.LiveKitAPI, start_worker: StartWorker
) -> None:
    worker = await start_worker("u")
    sim.faults.seed(11)
    sim.faults.unoffered_rate = 0.5
    created = [
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(room=f"u-{i}", agent_name="u")
        )
        for i in range(20)
    ]
    await sim.settle()
    offered = {j.dispatch_id for j in worker.offered}
    never = [d.id for d in created if d.id not in offered]
    assert 0 < len(never) < 20
    assert sim.faults.injected["unoffered"] == len(never)


async def test_every_fault_is_counted_by_kind(
    sim: LiveKitSim, lkapi: api.LiveKitAPI, start_worker: StartWorker
) -> None:
    sim.workers.availability_timeout_s = 0.1
    worker = await start_worker("c")
    sim.faults.set(CREATE, error_rate=1.0)
    with pytest.raises(api.ServerError):
        await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="c"))
    sim.faults.set(CREATE, drop_rate=1.0)
    with pytest.raises(aiohttp.ClientError):
        await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="c"))
    sim.faults.clear()
    sim.faults.workers_never_answer = True
    await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(room="c", agent_name="c")
    )
    await sim.settle()
    assert worker.offered == []

    expected = {
        "error": 1,
        "lost_answer": 0,
        "delayed": 0,
        "dropped": 1,
        "unoffered": 0,
        "workers_never_answer": 1,
    }
    assert sim.faults.injected == expected
    assert sim.state()["faults_injected"] == expected
    async with aiohttp.ClientSession(sim.url) as http, http.get("/_sim/state") as resp:
        assert (await resp.json())["faults_injected"] == expected


async def test_a_seed_makes_fault_decisions_repeatable() -> None:
    async def run(seed: int) -> list[str]:
        async with running_sim() as sim:
            sim.faults.seed(seed)
            sim.faults.set(CREATE, error_rate=0.2, drop_rate=0.1, lost_answer_rate=0.3)
            sim.faults.unoffered_rate = 0.5
            async with api.LiveKitAPI(sim.url, API_KEY, API_SECRET) as lk:
                for i in range(30):
                    with contextlib.suppress(api.ServerError, aiohttp.ClientError):
                        await lk.agent_dispatch.create_dispatch(
                            api.CreateAgentDispatchRequest(room=f"s{i}", agent_name="x")
                        )
            unoffered = sim.faults.injected["unoffered"]
            return [c.code for c in sim.calls_to(CREATE)] + [f"unoffered={unoffered}"]

    first = await run(5)
    assert await run(5) == first
    assert {"ok", "unavailable", "dropped", "lost_answer"} <= set(first)
    assert await run(6) != first


async def test_new_switches_over_http(sim: LiveKitSim, lkapi: api.LiveKitAPI) -> None:
    rule = {"lost_answer_rate": 1.0, "response_delay_ms": 1.0, "response_delay_rate": 0.0}
    async with aiohttp.ClientSession(sim.url) as http:
        body = {"twirp": {CREATE: rule}, "unoffered_rate": 0.25, "seed": 9}
        async with http.post("/_sim/faults", json=body) as resp:
            assert resp.status == 200
            answer = await resp.json()
        for bad in (
            {"twirp": {CREATE: {"lost_answer_rate": 1.5}}},
            {"twirp": {CREATE: {"response_delay_rate": "half"}}},
            {"unoffered_rate": -0.1},
            {"seed": "nine"},
        ):
            async with http.post("/_sim/faults", json=bad) as resp:
                assert resp.status == 400, bad

    assert answer["twirp"][CREATE]["lost_answer_rate"] == 1.0
    assert answer["twirp"][CREATE]["response_delay_rate"] == 0.0
    assert answer["unoffered_rate"] == 0.25
    assert answer["injected"]["lost_answer"] == 0
    assert sim.faults.unoffered_rate == 0.25
    assert sim.faults.for_endpoint(CREATE) == TwirpFault(**rule)  # the bad posts changed nothing
    expected = random.Random(9).random()
    assert sim.faults.rng.random() == expected
    with pytest.raises(api.ServerError):
        await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="h"))
    assert [c.code for c in sim.calls_to(CREATE)] == ["lost_answer"]


def test_rates_outside_zero_to_one_are_refused() -> None:
    with pytest.raises(ValueError, match="drop_rate"):
        Faults().set(CREATE, drop_rate=2)
    with pytest.raises(ValueError, match="lost_answer_rate"):
        TwirpFault(lost_answer_rate=-0.5)
