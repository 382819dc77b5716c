"""Workers ride out Redis going away: they keep running, log the outage once, and finish what
they were doing once Redis is back (with its data: AOF), with no event lost or dispatched twice.
Each test has a Redis of its own, which it stops and starts again on the same port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from arq import ArqRedis

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from tasks import DispatchRequest, create_redis, enqueue_dispatch, keys
from tests.orchestrator.conftest import Spawn, results, worker_checked_in
from tests.orchestrator.test_dispatch import CREATE
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

OUTAGE_S = 3.0
UNREACHABLE = "Redis is unreachable; waiting for it, work resumes when it answers"
ANSWERS = "Redis answers again"


@pytest.fixture
async def queue(own_redis: LocalRedis) -> AsyncIterator[ArqRedis]:
    pool = await create_redis(own_redis.url)
    yield pool
    await pool.aclose()


def log_lines(proc: Any, message: str) -> int:
    return sum(message in line for line in Path(proc.log_path).read_text().splitlines())


def alive(*procs: Any) -> None:
    for proc in procs:
        assert proc.poll() is None, Path(proc.log_path).read_text()[-3000:]


async def test_a_polling_worker_rides_out_an_outage_and_logs_it_once(
    sim: LiveKitSim, own_redis: LocalRedis, queue: ArqRedis, spawn_worker: Spawn
) -> None:
    worker = spawn_worker(REDIS_URL=own_redis.url)
    await eventually(lambda: worker_checked_in(queue), timeout_s=20, what="worker polling")
    before = await enqueue_dispatch(queue, DispatchRequest(event_id="e-before", room="r-before"))
    await eventually(lambda: results(queue, [before.job_id]), what="a dispatch before")

    own_redis.stop()
    # Polling every few ms, it meets the outage at once, and says so once.
    await eventually(lambda: log_lines(worker, UNREACHABLE) == 1, what="the outage logged")
    await asyncio.sleep(OUTAGE_S)  # the fault: Redis stays away this long
    own_redis.start()  # same port, same data

    after = await enqueue_dispatch(queue, DispatchRequest(event_id="e-after", room="r-after"))
    [outcome] = await eventually(
        lambda: results(queue, [after.job_id]), timeout_s=20, what="a dispatch after"
    )
    assert outcome["outcome"] == "dispatched"
    alive(worker)
    await eventually(lambda: log_lines(worker, ANSWERS) == 1, what="the end logged")
    assert log_lines(worker, UNREACHABLE) == 1
    outage = await queue.hgetall(keys.REDIS_OUTAGE)  # type: ignore[misc]
    assert int(outage[b"ended_ms"]) > int(outage[b"started_ms"]) > 0


async def test_an_outage_longer_than_a_jobs_in_progress_mark_dispatches_it_once(
    sim: LiveKitSim, own_redis: LocalRedis, queue: ArqRedis, spawn_worker: Spawn
) -> None:
    # A dispatch is in flight when Redis goes away: LiveKit makes it, its record cannot be
    # written. The outage outlasts arq's in-progress mark (job timeout + 10 s), so once Redis
    # is back any of the workers may start the job again while the first still finishes it.
    env = {"REDIS_URL": own_redis.url, "LKD_JOB_TIMEOUT_S": "2"}
    workers = [spawn_worker(**env) for _ in range(2)]
    await eventually(lambda: worker_checked_in(queue), timeout_s=20, what="workers polling")
    sim.faults.set(CREATE, response_delay_ms=1_000)  # made at once, answered a second later
    job = await enqueue_dispatch(queue, DispatchRequest(event_id="e-mid", room="r-mid"))
    await eventually(lambda: [d for d in sim.dispatches("r-mid") if d.agent_name], what="made")
    own_redis.kill()
    sim.faults.clear()
    await eventually(
        lambda: all(log_lines(w, UNREACHABLE) == 1 for w in workers), what="outage met"
    )
    await asyncio.sleep(2 + 10 + 2)  # the fault: past the mark's expiry (timeout + 10 s)
    own_redis.start()

    [outcome] = await eventually(
        lambda: results(queue, [job.job_id]), timeout_s=40, what="the event's outcome"
    )
    [dispatch] = [d for d in sim.dispatches("r-mid") if d.agent_name]
    assert outcome.get("outcome") == "dispatched", outcome
    assert outcome["dispatch_id"] == dispatch.id
    assert len(sim.calls_to(CREATE)) == 1
    alive(*workers)
