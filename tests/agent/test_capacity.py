"""AGENT_MAX_SESSIONS holds at the request handler, not only in the load the worker reports.

A burst of job requests arrives before LiveKit hears of the worker's load (every 2.5 s), and
before livekit-agents counts the jobs it has just accepted: it estimates their load from its
number of warm processes (here 4), which, above the session limit (here 2), would let all of
them in. The handler declines the requests beyond the limit, so LiveKit offers them to
another worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from livekit import api
from redis.asyncio import Redis

from livekit_sim import LiveKitSim
from tests.agent.conftest import MAX_SESSIONS, new_job, new_room
from tests.agent.reports import wait_for_report
from tests.agent.test_worker import create_dispatch, worker_state
from tests.agent.worker_process import AgentWorker
from tests.support.waiting import eventually

pytestmark = [pytest.mark.system, pytest.mark.asyncio(loop_scope="module")]

DECLINED = "declining the job: this worker is full, LiveKit offers it to another"


@pytest.fixture(scope="module")
def worker_overrides() -> dict[str, str]:
    return {"AGENT_NUM_IDLE_PROCESSES": "4"}


async def test_a_burst_beyond_max_sessions_is_declined_not_run(
    worker: AgentWorker, lkapi: api.LiveKitAPI, agent_redis: Redis, sim: LiveKitSim,
    agent_name: str, tmp_path: Path,
) -> None:  # fmt: skip
    release = tmp_path / "release"
    burst = [new_job({"mode": "hold", "release_file": str(release)}) for _ in range(4)]
    await eventually(
        lambda: worker_state(sim, agent_name)["status"] == "WS_AVAILABLE",
        timeout_s=10,
        what="the worker to report room for jobs",
    )
    await asyncio.gather(*(create_dispatch(lkapi, agent_name, new_room(), m) for _, _, m in burst))

    def taken() -> list[str]:
        return [sid for sid, _, _ in burst if worker.find("session started", session_id=sid)]

    await eventually(lambda: len(taken()) == MAX_SESSIONS, what="the sessions it has room for")
    declined = await eventually(lambda: worker.find(DECLINED), what="a request declined")
    assert {r["max_sessions"] for r in declined} == {MAX_SESSIONS}
    await sim.settle()
    assert await worker.active_jobs() == MAX_SESSIONS

    release.touch()
    for session_id in taken():
        assert (await wait_for_report(agent_redis, session_id)).status == "completed"
    await worker.wait_idle()
    assert len(taken()) == MAX_SESSIONS  # LiveKit had no other worker: the rest never ran
