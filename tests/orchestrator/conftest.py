"""Fixtures: a LiveKitSim, orchestrator settings pointing at it and the test Redis, and an
orchestrator arq worker running in this process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from arq import ArqRedis
from arq.worker import Worker

from livekit_sim import LiveKitSim
from orchestrator.local_redis import LocalRedis
from orchestrator.settings import Settings
from tasks import create_redis
from tests.support.fake_worker import AcceptingWorker
from tests.support.orchestrator_worker import running_orchestrator, settings_for

API_KEY = "orchestrator-test-key"
API_SECRET = "orchestrator-test-secret-with-32-bytes-or-more"
AGENT = "support-agent"


@pytest.fixture
async def sim() -> AsyncIterator[LiveKitSim]:
    async with LiveKitSim(api_key=API_KEY, api_secret=API_SECRET) as server:
        yield server


def make_settings(redis_server: LocalRedis, sim: LiveKitSim, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "assignment_check_delay_s": 0.3,
        "assignment_attempts": 2,
        "retry_base_delay_s": 0.05,
        "retry_max_delay_s": 0.2,
        "report_grace_s": 0.5,
        "claim_stale_s": 2.0,
        "job_timeout_s": 5.0,
        # The protocol-level fake agent worker sends no heartbeats; tests that need the
        # heartbeat rule turn it on.
        "agent_heartbeats": False,
    }
    return settings_for(redis_server.url, sim, AGENT, **{**values, **overrides})


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
    """Start in-process orchestrator workers: `await run_worker(settings)`."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(settings: Settings, **overrides: Any) -> Worker:
            return await stack.enter_async_context(running_orchestrator(settings, **overrides))

        yield start


@pytest.fixture
async def orchestrator(settings: Settings, run_worker: RunWorker) -> Worker:
    worker: Worker = await run_worker(settings)
    return worker


@pytest.fixture
async def agent_worker(sim: LiveKitSim) -> AsyncIterator[AcceptingWorker]:
    worker = await AcceptingWorker(sim.url, API_KEY, API_SECRET, AGENT).start()
    yield worker
    await worker.aclose()
