"""RoomService and room life cycle: creation, agents, participants, timeouts, job requests."""

from __future__ import annotations

import re
import time

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent

from livekit_sim import LiveKitSim
from livekit_sim.workers import TerminationReason
from tests.sim.conftest import API_KEY, API_SECRET
from tests.support.sim import MakeSim
from tests.support.waiting import eventually as wait_for

pytestmark = pytest.mark.integration

PARTICIPANT_ID = re.compile(r"^PA_[23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz]{12}$")


class FakeWorkers:
    """Stands in for WorkerPool.request_job / terminate_job: accepts the agent names given."""

    def __init__(self, accept: set[str]) -> None:
        self.accept = accept
        self.requests: list[agent.Job] = []
        self.terminated: list[tuple[str, TerminationReason]] = []

    async def request_job(self, job: agent.Job) -> agent.JobState | None:
        self.requests.append(job)
        if job.agent_name not in self.accept:
            return None
        return agent.JobState(status=agent.JobStatus.JS_RUNNING, worker_id="AW_fakefakefake")

    async def terminate_job(
        self, job_id: str, reason: TerminationReason, *, end_reason: str | None = None
    ) -> agent.JobState | None:
        self.terminated.append((job_id, reason))
        return agent.JobState(status=agent.JobStatus.JS_SUCCESS)


@pytest.fixture
def workers(sim: LiveKitSim, monkeypatch: pytest.MonkeyPatch) -> FakeWorkers:
    fake = FakeWorkers({"support"})
    monkeypatch.setattr(sim.workers, "request_job", fake.request_job)
    monkeypatch.setattr(sim.workers, "terminate_job", fake.terminate_job)
    return fake


@pytest.fixture
async def short_sim(make_sim: MakeSim) -> LiveKitSim:
    return await make_sim(empty_timeout_s=0.3, departure_timeout_s=0.3, room_check_interval_s=0.05)


async def test_create_room_with_agents_gets_only_those_dispatches(
    lkapi: api.LiveKitAPI, workers: FakeWorkers, sim: LiveKitSim
) -> None:
    room = await lkapi.room.create_room(
        api.CreateRoomRequest(
            name="r1",
            empty_timeout=60,
            metadata="room-meta",
            agents=[api.RoomAgentDispatch(agent_name="support", metadata="m1")],
        )
    )
    assert (room.name, room.empty_timeout, room.metadata) == ("r1", 60, "room-meta")
    dispatches = await lkapi.agent_dispatch.list_dispatch("r1")
    assert [(d.agent_name, d.metadata, d.room) for d in dispatches] == [("support", "m1", "r1")]
    await sim.settle()
    assert [(j.type, j.agent_name, j.metadata) for j in workers.requests] == [
        (agent.JobType.JT_ROOM, "support", "m1")
    ]


async def test_create_room_on_a_live_room_changes_nothing(lkapi: api.LiveKitAPI) -> None:
    first = await lkapi.room.create_room(api.CreateRoomRequest(name="r2", metadata="one"))
    again = await lkapi.room.create_room(
        api.CreateRoomRequest(
            name="r2", metadata="two", agents=[api.RoomAgentDispatch(agent_name="x")]
        )
    )
    assert (again.sid, again.metadata) == (first.sid, "one")
    assert [d.agent_name for d in await lkapi.agent_dispatch.list_dispatch("r2")] == [""]


async def test_create_room_limits(lkapi: api.LiveKitAPI) -> None:
    with pytest.raises(api.ServerError) as err:
        await lkapi.room.create_room(api.CreateRoomRequest(name="r" * 257))
    assert (err.value.code, err.value.message) == (
        "invalid_argument",
        "room name length exceeds limits",
    )
    with pytest.raises(api.ServerError) as err:
        await lkapi.room.create_room(api.CreateRoomRequest(name="r3", metadata="x" * 524289))
    assert (err.value.code, err.value.status, err.value.message, err.value.metadata) == (
        "invalid_argument",
        400,
        "metadata size exceeds limits 524288",
        {"argument": "metadata size exceeds limits"},
    )
    agents = [api.RoomAgentDispatch(agent_name="a", metadata="x" * 524289)]
    with pytest.raises(api.ServerError) as err:
        await lkapi.room.create_room(api.CreateRoomRequest(name="r3", agents=agents))
    assert err.value.message == "metadata size exceeds limits 524288"


async def test_delete_room(lkapi: api.LiveKitAPI, sim: LiveKitSim) -> None:
    await lkapi.room.create_room(api.CreateRoomRequest(name="r4"))
    await lkapi.room.delete_room(api.DeleteRoomRequest(room="r4"))
    assert (await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms == []
    with pytest.raises(api.ServerError) as err:
        await lkapi.room.delete_room(api.DeleteRoomRequest(room="r4"))
    assert (err.value.code, err.value.status, err.value.message) == (
        "not_found",
        404,
        "requested room does not exist",
    )


async def test_list_rooms_filters_by_name(lkapi: api.LiveKitAPI) -> None:
    for name in ("a", "b", "c"):
        await lkapi.room.create_room(api.CreateRoomRequest(name=name))
    assert sorted(r.name for r in (await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms) == [
        "a",
        "b",
        "c",
    ]
    listed = await lkapi.room.list_rooms(api.ListRoomsRequest(names=["b", "zz"]))
    assert [r.name for r in listed.rooms] == ["b"]


async def test_participants_join_list_and_remove(lkapi: api.LiveKitAPI, sim: LiveKitSim) -> None:
    joined = await sim.join_participant(
        "r5", "caller", name="Caller", metadata="pm", attributes={"x": "y"}
    )
    assert PARTICIPANT_ID.match(joined.sid)
    listed = (
        await lkapi.room.list_participants(api.ListParticipantsRequest(room="r5"))
    ).participants
    assert [(p.identity, p.name, p.metadata, dict(p.attributes)) for p in listed] == [
        ("caller", "Caller", "pm", {"x": "y"})
    ]
    rooms = (await lkapi.room.list_rooms(api.ListRoomsRequest(names=["r5"]))).rooms
    assert rooms[0].num_participants == 1
    await lkapi.room.remove_participant(api.RoomParticipantIdentity(room="r5", identity="caller"))
    assert sim.participants("r5") == []
    with pytest.raises(api.ServerError) as err:
        await lkapi.room.remove_participant(api.RoomParticipantIdentity(room="r5", identity="x"))
    assert (err.value.code, err.value.message) == ("not_found", "participant does not exist")


async def test_list_participants_of_a_missing_room_is_empty(lkapi: api.LiveKitAPI) -> None:
    response = await lkapi.room.list_participants(api.ListParticipantsRequest(room="nowhere"))
    assert list(response.participants) == []


async def test_jobs_for_room_and_each_non_agent_participant(
    lkapi: api.LiveKitAPI, sim: LiveKitSim, workers: FakeWorkers
) -> None:
    await sim.join_participant("r6", "caller")
    await sim.join_participant("r6", "speaker", audio=True)
    await sim.join_participant("r6", "other-agent", kind="agent")
    await sim.settle()
    # The default dispatch (agent_name "") at room creation, JT_PARTICIPANT for the caller
    # and the speaker, and JT_PUBLISHER for the speaker's first track.
    assert sorted((j.agent_name, j.type) for j in workers.requests) == [
        ("", agent.JobType.JT_ROOM),
        ("", agent.JobType.JT_PUBLISHER),
        ("", agent.JobType.JT_PARTICIPANT),
        ("", agent.JobType.JT_PARTICIPANT),
    ]
    workers.requests.clear()
    dispatch = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="support", room="r6", metadata="m")
    )
    await sim.settle()
    # CreateDispatch in a room with people: a job for each, and one more for each publisher.
    assert sorted((j.type, j.participant.identity) for j in workers.requests) == [
        (agent.JobType.JT_ROOM, ""),
        (agent.JobType.JT_PUBLISHER, "speaker"),
        (agent.JobType.JT_PARTICIPANT, "caller"),
        (agent.JobType.JT_PARTICIPANT, "speaker"),
    ]
    assert all(j.dispatch_id == dispatch.id and j.metadata == "m" for j in workers.requests)
    assert all(j.id.startswith("AJ_") and j.room.name == "r6" for j in workers.requests)
    listed = await lkapi.agent_dispatch.get_dispatch(dispatch.id, "r6")
    assert listed is not None
    assert len(listed.state.jobs) == 4
    assert {j.state.status for j in listed.state.jobs} == {agent.JobStatus.JS_RUNNING}


async def test_dropped_job_leaves_the_dispatch_without_jobs(
    lkapi: api.LiveKitAPI, sim: LiveKitSim, workers: FakeWorkers
) -> None:
    dispatch = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="nobody", room="r7")
    )
    await sim.settle()
    listed = await lkapi.agent_dispatch.get_dispatch(dispatch.id, "r7")
    assert listed is not None
    assert list(listed.state.jobs) == []
    assert [j.agent_name for j in workers.requests].count("nobody") == 1


async def test_delete_dispatch_terminates_its_jobs(
    lkapi: api.LiveKitAPI, sim: LiveKitSim, workers: FakeWorkers
) -> None:
    dispatch = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="support", room="r8")
    )
    await sim.settle()
    (job,) = (await lkapi.agent_dispatch.get_dispatch(dispatch.id, "r8")).state.jobs  # type: ignore[union-attr]
    deleted = await lkapi.agent_dispatch.delete_dispatch(dispatch.id, "r8")
    assert [j.id for j in deleted.state.jobs] == [job.id]
    await sim.settle()
    assert workers.terminated == [(job.id, TerminationReason.TERMINATION_REQUESTED)]


async def test_delete_room_terminates_jobs_as_agent_left_room(
    lkapi: api.LiveKitAPI, sim: LiveKitSim, workers: FakeWorkers
) -> None:
    await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="support", room="r9")
    )
    await sim.settle()
    job_ids = [j.id for d in sim.dispatches("r9") for j in d.state.jobs]
    assert len(job_ids) == 1
    await lkapi.room.delete_room(api.DeleteRoomRequest(room="r9"))
    await sim.settle()
    assert workers.terminated == [(job_ids[0], TerminationReason.AGENT_LEFT_ROOM)]


async def test_room_nobody_joined_closes_after_empty_timeout(short_sim: LiveKitSim) -> None:
    async with api.LiveKitAPI(short_sim.url, API_KEY, API_SECRET) as lk:
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="idle"))
    created = time.monotonic()
    await wait_for(lambda: "idle" not in short_sim.rooms, what="empty timeout")
    assert time.monotonic() - created >= 0.25


async def test_room_closes_after_departure_timeout_not_before(short_sim: LiveKitSim) -> None:
    await short_sim.join_participant("busy", "caller")
    await short_sim.join_participant("busy", "agent-x", kind="agent")
    # A participant present keeps the room open well past both timeouts.
    deadline = time.monotonic() + 0.6
    await wait_for(lambda: time.monotonic() > deadline, what="time passing")
    assert "busy" in short_sim.rooms
    await short_sim.leave_participant("busy", "caller")
    left = time.monotonic()
    await wait_for(lambda: "busy" not in short_sim.rooms, what="departure timeout")
    assert time.monotonic() - left >= 0.25
    assert short_sim.counters()["rooms_closed"] == 1


async def test_control_api_over_http(sim: LiveKitSim, lkapi: api.LiveKitAPI) -> None:
    async with aiohttp.ClientSession(sim.url) as http:
        async with http.post(
            "/_sim/rooms/h1/participants", json={"identity": "caller", "name": "C"}
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["identity"] == "caller"
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="support", room="h1")
        )
        async with http.get("/_sim/state") as resp:
            state = await resp.json()
        (room,) = state["rooms"]
        assert room["room"]["name"] == "h1"
        assert [p["identity"] for p in room["participants"]] == ["caller"]
        assert sorted(d["agent_name"] for d in room["dispatches"]) == ["", "support"]
        assert state["counters"]["AgentDispatchService/CreateDispatch ok"] == 1
        async with http.get(
            "/_sim/calls", params={"method": "AgentDispatchService/CreateDispatch"}
        ) as resp:
            calls = (await resp.json())["calls"]
        assert [(c["room"], c["code"]) for c in calls] == [("h1", "ok")]
        async with http.delete("/_sim/rooms/h1/participants/caller") as resp:
            assert resp.status == 200
        async with http.delete("/_sim/rooms/h1/participants/caller") as resp:
            assert resp.status == 404
        async with http.post("/_sim/rooms/h1/participants", json={"name": "no id"}) as resp:
            assert resp.status == 400
    assert sim.participants("h1") == []
