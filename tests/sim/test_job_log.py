"""The sim's job log: one record per job a worker accepted, with when and how it ended."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent

from livekit_sim import LiveKitSim
from livekit_sim.job_log import JobLog, JobRecord
from tests.sim.conftest import API_KEY, API_SECRET
from tests.sim.protocol_worker import ScriptedWorker
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

AGENT = "logged-agent"


@pytest.fixture
async def worker(sim: LiveKitSim) -> AsyncIterator[ScriptedWorker]:
    scripted = await ScriptedWorker(sim.ws_url, API_KEY, API_SECRET, AGENT).start()
    yield scripted
    await scripted.aclose()


async def dispatch(lkapi: api.LiveKitAPI, room: str, metadata: str = "") -> api.AgentDispatch:
    return await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(room=room, agent_name=AGENT, metadata=metadata)
    )


async def record_of(sim: LiveKitSim, dispatch_id: str) -> JobRecord:
    """The job log's record of the dispatch's job, once its worker accepted it."""

    def find() -> JobRecord | None:
        return next((j for j in sim.job_log if j.dispatch_id == dispatch_id), None)

    found = await eventually(find, what=f"a job record for {dispatch_id}")
    assert found is not None
    return found


async def test_an_accepted_job_is_recorded_until_its_worker_ends_it(
    sim: LiveKitSim, lkapi: api.LiveKitAPI, worker: ScriptedWorker
) -> None:
    before = time.time_ns()
    created = await dispatch(lkapi, "jl-1", metadata='{"session_id": "s1"}')

    record = await record_of(sim, created.id)

    assert [job.id for job in worker.assigned] == [record.job_id]
    assert (record.room, record.agent_name, record.metadata) == (
        "jl-1",
        AGENT,
        '{"session_id": "s1"}',
    )
    assert record.worker_id == worker.id
    assert record.participant_identity == f"agent-{record.job_id}"
    assert before <= record.assigned_at_ns <= time.time_ns()
    assert (record.status, record.ended_at_ns, record.end_reason) == ("JS_RUNNING", None, None)

    await worker.finish(record.job_id, agent.JS_FAILED, error="crashed")

    await eventually(lambda: record.end_reason is not None, what="the job's end")
    assert (record.status, record.error, record.end_reason) == ("JS_FAILED", "crashed", "JS_FAILED")
    assert record.ended_at_ns is not None
    assert record.assigned_at_ns <= record.ended_at_ns <= time.time_ns()
    assert record.worker_disconnected_at_ns is None


async def test_two_dispatches_show_two_agents_in_the_room_at_once(
    sim: LiveKitSim, lkapi: api.LiveKitAPI, worker: ScriptedWorker
) -> None:
    first = await record_of(sim, (await dispatch(lkapi, "jl-2")).id)
    second = await record_of(sim, (await dispatch(lkapi, "jl-2")).id)
    await worker.finish(first.job_id, agent.JS_SUCCESS)
    await eventually(lambda: first.ended_at_ns is not None, what="the first job's end")

    assert first.end_reason == "JS_SUCCESS"
    assert first.ended_at_ns is not None
    # The second agent arrived while the first one still ran: they overlapped.
    assert first.assigned_at_ns < second.assigned_at_ns < first.ended_at_ns
    assert second.ended_at_ns is None
    assert [j.job_id for j in sim.jobs_in("jl-2")] == [first.job_id, second.job_id]


async def test_server_terminations_are_recorded_with_their_cause(
    sim: LiveKitSim, lkapi: api.LiveKitAPI, worker: ScriptedWorker
) -> None:
    deleted = await record_of(sim, (await dispatch(lkapi, "jl-del")).id)
    await lkapi.agent_dispatch.delete_dispatch(deleted.dispatch_id, "jl-del")

    left = await record_of(sim, (await dispatch(lkapi, "jl-left")).id)
    await sim.join_participant("jl-left", left.participant_identity, kind="agent")
    await sim.leave_participant("jl-left", left.participant_identity)

    closed = await record_of(sim, (await dispatch(lkapi, "jl-closed")).id)
    await sim.close_room("jl-closed")

    await sim.settle()
    ends = [(r.end_reason, r.status) for r in (deleted, left, closed)]
    assert ends == [
        ("termination_requested", "JS_SUCCESS"),
        ("agent_left_room", "JS_FAILED"),
        ("room_closed", "JS_FAILED"),
    ]
    await eventually(lambda: len(worker.terminations) == 3, what="three JobTerminations")
    assert sorted(worker.terminations) == sorted(r.job_id for r in (deleted, left, closed))
    # The worker's own end after the termination changes nothing. (The worker's messages are
    # handled in order: once its answer to a later job is in, so are these.)
    await worker.finish(deleted.job_id, agent.JS_FAILED)
    await worker.finish(closed.job_id, agent.JS_SUCCESS)
    await record_of(sim, (await dispatch(lkapi, "jl-later")).id)
    assert [(r.end_reason, r.status) for r in (deleted, left, closed)] == ends


async def test_a_disconnected_workers_jobs_stay_unended(
    sim: LiveKitSim, lkapi: api.LiveKitAPI, worker: ScriptedWorker
) -> None:
    record = await record_of(sim, (await dispatch(lkapi, "jl-gone")).id)

    await worker.aclose()

    await eventually(
        lambda: record.worker_disconnected_at_ns is not None, what="the disconnect recorded"
    )
    assert record.worker_disconnected_at_ns is not None
    assert record.worker_disconnected_at_ns >= record.assigned_at_ns
    # As on the real server, the job is forgotten, not ended: DeleteDispatch reaches nobody.
    await lkapi.agent_dispatch.delete_dispatch(record.dispatch_id, "jl-gone")
    await sim.settle()
    assert (record.ended_at_ns, record.end_reason, record.status) == (None, None, "JS_RUNNING")


async def test_jobs_no_worker_accepted_are_not_recorded(
    sim: LiveKitSim, lkapi: api.LiveKitAPI, worker: ScriptedWorker
) -> None:
    await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(room="jl-none", agent_name="nobody-serves-this")
    )
    sim.faults.unoffered_rate = 1.0
    await dispatch(lkapi, "jl-none")
    await sim.settle()
    # Requested: the room's default dispatch's job, nobody's, and the unoffered one.
    assert sim.counters()["jobs_requested"] == 3
    assert list(sim.job_log) == []


async def test_a_simulated_job_is_recorded_without_a_dispatch(
    sim: LiveKitSim, worker: ScriptedWorker
) -> None:
    await worker.simulate("jl-simulated")

    await eventually(lambda: worker.assigned, what="the simulated job's assignment")
    [record] = await eventually(lambda: sim.jobs_in("jl-simulated"), what="its record")
    assert (record.job_id, record.dispatch_id, record.agent_name, record.worker_id) == (
        worker.assigned[0].id,
        "",
        AGENT,
        worker.id,
    )


async def test_job_log_over_http(
    sim: LiveKitSim, lkapi: api.LiveKitAPI, worker: ScriptedWorker
) -> None:
    first = await record_of(sim, (await dispatch(lkapi, "jl-h1", metadata="m")).id)
    await record_of(sim, (await dispatch(lkapi, "jl-h2")).id)
    await worker.finish(first.job_id, agent.JS_SUCCESS)
    await eventually(lambda: first.end_reason is not None, what="the job's end")

    async with aiohttp.ClientSession(sim.url) as http:
        async with http.get("/_sim/jobs") as resp:
            assert resp.status == 200
            everything = (await resp.json())["jobs"]
        async with http.get("/_sim/jobs", params={"room": "jl-h1"}) as resp:
            one_room = (await resp.json())["jobs"]

    assert [j["room"] for j in everything] == ["jl-h1", "jl-h2"]
    assert one_room == [everything[0]]
    assert one_room[0] == {
        "job_id": first.job_id,
        "dispatch_id": first.dispatch_id,
        "room": "jl-h1",
        "agent_name": AGENT,
        "metadata": "m",
        "worker_id": worker.id,
        "participant_identity": first.participant_identity,
        "assigned_at_ns": first.assigned_at_ns,
        "status": "JS_SUCCESS",
        "error": "",
        "ended_at_ns": first.ended_at_ns,
        "end_reason": "JS_SUCCESS",
        "worker_disconnected_at_ns": None,
    }


def test_the_log_keeps_only_the_newest_records() -> None:
    log = JobLog(maxlen=2)
    jobs = [agent.Job(id=f"AJ_{i}", dispatch_id=f"AD_{i}") for i in range(3)]
    for job in jobs:
        log.assigned(job, agent.JobState(status=agent.JS_RUNNING, worker_id="AW_1"))

    log.ended("AJ_2", agent.JobState(status=agent.JS_SUCCESS, ended_at=5), "JS_SUCCESS")
    log.ended("AJ_unknown", agent.JobState(status=agent.JS_FAILED), "JS_FAILED")

    assert [(r.job_id, r.ended_at_ns) for r in log.records] == [("AJ_1", None), ("AJ_2", 5)]
