"""Fixtures: a LiveKitSim, orchestrator settings pointing at it and the test Redis, and an
orchestrator arq worker running in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from arq import ArqRedis
from arq.worker import Worker

from livekit_sim import LiveKitSim
from orchestrator.context import CTX_KEY
from orchestrator.local_redis import LocalRedis
from orchestrator.settings import Settings, load_settings
from orchestrator.worker import worker_settings
from tasks import create_redis
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

API_KEY = "orchestrator-test-key"
API_SECRET = "orchestrator-test-secret-with-32-bytes-or-more"
AGENT = "support-agent"


@pytest.fixture
async def sim() -> AsyncIterator[LiveKitSim]:
    async with LiveKitSim(api_key=API_KEY, api_secret=API_SECRET) as server:
        yield server


def make_settings(redis_server: LocalRedis, sim: LiveKitSim, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "REDIS_URL": redis_server.url,
        "LIVEKIT_URL": sim.url,
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
        "AGENT_NAME": AGENT,
        "assignment_check_delay_s": 0.3,
        "assignment_attempts": 2,
        "retry_base_delay_s": 0.05,
        "retry_max_delay_s": 0.2,
        "report_grace_s": 0.5,
        "claim_stale_s": 2.0,
        "reconcile_interval_s": 1,
        "job_timeout_s": 5.0,
        # The protocol-level fake agent worker sends no heartbeats; tests that need the
        # heartbeat rule turn it on.
        "agent_heartbeats": False,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def settings(redis_server: LocalRedis, sim: LiveKitSim) -> Settings:
    return make_settings(redis_server, sim)


@pytest.fixture
async def arq_redis(redis_server: LocalRedis) -> AsyncIterator[ArqRedis]:
    pool = await create_redis(redis_server.url)
    await pool.flushall()
    yield pool
    await pool.aclose()


RunWorker = Callable[..., Any]


@pytest.fixture
async def run_worker(arq_redis: ArqRedis) -> AsyncIterator[RunWorker]:
    """Start an in-process orchestrator worker: `await run_worker(settings)`."""
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(settings: Settings, **overrides: Any) -> Worker:
        kwargs = {**worker_settings(settings), "handle_signals": False, **overrides}
        worker = Worker(**kwargs)
        task = asyncio.create_task(worker.async_run())
        running.append((worker, task))
        await eventually(
            lambda: CTX_KEY in worker.ctx or task.done(), what="orchestrator worker start-up"
        )
        if task.done():
            task.result()  # start-up failed: raise its error here
        return worker

    yield start
    for worker, task in running:
        # Let running jobs finish: cancelling one inside a Redis pipeline leaks its connection.
        worker.allow_pick_jobs = False
        await eventually(
            lambda w=worker: all(t.done() for t in w.tasks.values()), what="worker idle"
        )
        await worker.close()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def orchestrator(settings: Settings, run_worker: RunWorker) -> Worker:
    worker: Worker = await run_worker(settings)
    return worker


@pytest.fixture
async def agent_worker(sim: LiveKitSim) -> AsyncIterator[AcceptingWorker]:
    worker = await AcceptingWorker(sim.url, API_KEY, API_SECRET, AGENT).start()
    yield worker
    await worker.aclose()
