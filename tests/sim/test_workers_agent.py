"""A real livekit-agents worker (separate processes) against the sim's /agent protocol."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from livekit import api
from livekit.protocol import agent, models

from livekit_sim import ids
from livekit_sim.server import LiveKitSim
from livekit_sim.workers import TerminationReason
from tests.sim.agent_apps.harness import WorkerProcess, read_json
from tests.support.sim import API_KEY, API_SECRET, running_sim
from tests.support.waiting import eventually as wait_for

pytestmark = [pytest.mark.system, pytest.mark.asyncio(loop_scope="module")]

AGENT_NAME = "sim-test-agent"


class PickFirstOrLast(random.Random):
    """Makes the weighted selection among two equally loaded workers pick the first or the last."""

    def __init__(self, last: bool) -> None:
        super().__init__()
        self.last = last

    def random(self) -> float:
        return 0.999999 if self.last else 0.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[LiveKitSim]:
    async with running_sim() as server:
        yield server


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agent-workers")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def workers(sim: LiveKitSim, out_dir: Path) -> AsyncIterator[dict[str, str]]:
    """Worker ids by label: "accept", and "refuse" (answers available=false)."""
    env = {
        "LIVEKIT_URL": sim.url,
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
        "SIM_TEST_AGENT_NAME": AGENT_NAME,
    }
    started: list[WorkerProcess] = []
    try:
        started.append(WorkerProcess(out_dir, "accept", env))
        started.append(WorkerProcess(out_dir, "refuse", {**env, "SIM_TEST_ON_REQUEST": "refuse"}))
        yield {proc.label: await proc.registered() for proc in started}
    finally:
        await asyncio.gather(*(proc.stop() for proc in started))


def make_job(agent_name: str, metadata: str, room: str = "workers-room") -> agent.Job:
    return agent.Job(
        id=ids.new_id(ids.JOB),
        dispatch_id=ids.new_id(ids.DISPATCH),
        type=agent.JT_ROOM,
        room=models.Room(sid=ids.new_id(ids.ROOM), name=room),
        agent_name=agent_name,
        metadata=metadata,
    )


async def test_workers_register_with_server_info(
    sim: LiveKitSim, workers: dict[str, str], out_dir: Path
) -> None:
    info = read_json(out_dir / "worker-accept.json")
    assert info is not None
    assert info["worker_id"].startswith("AW_")
    assert info["server_info"]["agent_protocol"] == 1
    registered = {w["id"]: w for w in sim.workers.snapshot()}
    assert set(workers.values()) <= set(registered)
    assert registered[workers["accept"]]["agent_name"] == AGENT_NAME


async def test_job_runs_with_metadata_then_termination_runs_shutdown(
    sim: LiveKitSim, workers: dict[str, str], out_dir: Path
) -> None:
    order = [w["id"] for w in sim.workers.snapshot()]
    # The refusing worker is asked first.
    sim.faults.rng = PickFirstOrLast(last=order.index(workers["refuse"]) == len(order) - 1)
    metadata = json.dumps({"session_id": "s-1", "payload": {"name": "Zoë", "n": 7}})
    job = make_job(AGENT_NAME, metadata)

    state = await sim.workers.request_job(job)

    assert state is not None
    assert state.status == agent.JS_RUNNING
    assert state.worker_id == workers["accept"]
    assert state.participant_identity == f"agent-{job.id}"
    assert read_json(out_dir / f"request-refuse-{job.id}.json") is not None
    seen = await wait_for(lambda: read_json(out_dir / f"job-{job.id}.json"), what="the job")
    assert seen["metadata"] == metadata
    assert seen["job_id"] == job.id
    assert seen["dispatch_id"] == job.dispatch_id
    assert seen["worker_id"] == workers["accept"]
    assert seen["identity"] == f"agent-{job.id}"
    assert seen["kind"] == "agent"
    assert seen["video_room"] == "workers-room"
    assert seen["video_agent"] is True
    assert seen["attributes"]["lk.agent_name"] == AGENT_NAME
    assert seen["attributes"]["test.label"] == "accept"

    ended = await sim.workers.terminate_job(job.id, TerminationReason.TERMINATION_REQUESTED)

    assert ended is not None
    assert ended.status == agent.JS_SUCCESS
    shutdown = await wait_for(
        lambda: read_json(out_dir / f"shutdown-{job.id}.json"), what="the shutdown callback"
    )
    assert shutdown["reason"]
    assert await sim.workers.terminate_job(job.id, TerminationReason.AGENT_LEFT_ROOM) is None


async def test_agent_left_room_fails_the_job(
    sim: LiveKitSim, workers: dict[str, str], out_dir: Path
) -> None:
    job = make_job(AGENT_NAME, "plain text metadata")
    state = await sim.workers.request_job(job)
    assert state is not None
    assert state.worker_id == workers["accept"]
    await wait_for(lambda: read_json(out_dir / f"job-{job.id}.json"), what="the job")

    ended = await sim.workers.terminate_job(job.id, TerminationReason.AGENT_LEFT_ROOM)

    assert ended is not None
    assert ended.status == agent.JS_FAILED
    assert ended.error == "agent worker left the room"
    await wait_for(lambda: read_json(out_dir / f"shutdown-{job.id}.json"), what="shutdown")


async def test_reject_with_terminate_ends_the_job_without_assignment(
    sim: LiveKitSim, workers: dict[str, str], out_dir: Path
) -> None:
    job = make_job(AGENT_NAME, json.dumps({"mode": "reject"}))

    state = await sim.workers.request_job(job)

    assert state is not None
    assert state.status == agent.JS_SUCCESS
    assert state.ended_at > 0
    assert sim.workers.worker_of(job.id) is None
    assert read_json(out_dir / f"job-{job.id}.json") is None


async def test_named_workers_get_no_other_name_nor_default_dispatch(
    sim: LiveKitSim, workers: dict[str, str], out_dir: Path
) -> None:
    for name in ("another-agent", ""):
        job = make_job(name, "{}")
        assert await sim.workers.request_job(job) is None
        for label in workers:
            assert read_json(out_dir / f"request-{label}-{job.id}.json") is None


async def test_create_and_delete_dispatch_end_to_end(
    sim: LiveKitSim, workers: dict[str, str], out_dir: Path
) -> None:
    metadata = json.dumps({"session_id": "e2e", "phone": "+15550100"})
    async with api.LiveKitAPI(sim.url, API_KEY, API_SECRET) as lkapi:
        dispatch = await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name=AGENT_NAME, room="e2e-room", metadata=metadata
            )
        )

        def job_of_dispatch() -> dict[str, Any] | None:
            for path in out_dir.glob("job-*.json"):
                seen = read_json(path)
                if seen is not None and seen["dispatch_id"] == dispatch.id:
                    return seen
            return None

        seen = await wait_for(job_of_dispatch, what="the dispatched job")
        assert seen["metadata"] == metadata
        assert seen["room"] == "e2e-room"
        assert seen["worker_id"] == workers["accept"]
        listed = await lkapi.agent_dispatch.list_dispatch("e2e-room")
        (ours,) = [d for d in listed if d.id == dispatch.id]
        assert [job.id for job in ours.state.jobs] == [seen["job_id"]]

        await lkapi.agent_dispatch.delete_dispatch(dispatch.id, "e2e-room")

        shutdown = await wait_for(
            lambda: read_json(out_dir / f"shutdown-{seen['job_id']}.json"), what="shutdown"
        )
        assert shutdown["reason"]
        assert sim.workers.worker_of(seen["job_id"]) is None
