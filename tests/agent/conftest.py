"""Fixtures for the agent tests: a private Redis, the LiveKit sim, the real livekit-api client
and one agent worker process per test module (starting one takes several seconds).

These fixtures live on the module's event loop: test modules using them set
`pytestmark = pytest.mark.asyncio(loop_scope="module")`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from arq import ArqRedis
from livekit import api
from redis.asyncio import Redis

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from tasks import create_redis
from tasks.models import JobMetadata, session_id_for
from tests.agent.worker_process import AgentWorker
from tests.support.events import new_event_id
from tests.support.sim import API_KEY, API_SECRET, running_sim

MAX_SESSIONS = 2


def new_job(payload: dict[str, object]) -> tuple[str, str, str]:
    """(session_id, event_id, job metadata JSON) for a fresh event carrying `payload`."""
    event_id = new_event_id()
    session_id = session_id_for(event_id)
    metadata = JobMetadata(session_id=session_id, event_id=event_id, metadata=payload)
    return session_id, event_id, metadata.to_json()


def new_room() -> str:
    return f"room-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def agent_redis_server() -> Iterator[LocalRedis]:
    """A Redis of this module's own, so a test may stop and restart it."""
    with LocalRedis() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent_redis(agent_redis_server: LocalRedis) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(agent_redis_server.url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def queue(agent_redis_server: LocalRedis) -> AsyncIterator[ArqRedis]:
    """An arq pool on the module's Redis, as producers and the orchestrator use."""
    pool = await create_redis(agent_redis_server.url)
    yield pool
    await pool.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[LiveKitSim]:
    async with running_sim(missing_room_delay_s=0.2) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lkapi(sim: LiveKitSim) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(sim.url, API_KEY, API_SECRET)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def agent_name() -> str:
    return f"test-agent-{uuid.uuid4().hex[:8]}"


def worker_env(sim: LiveKitSim, redis_url: str, agent_name: str) -> dict[str, str]:
    return {
        "LIVEKIT_URL": sim.url,
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
        "AGENT_NAME": agent_name,
        "REDIS_URL": redis_url,
        # The plug-in point under test: a handler from the test suite, by module path.
        "AGENT_SESSION_HANDLER": "tests.agent.handlers:scripted",
        "AGENT_HEALTH_HOST": "127.0.0.1",
        "AGENT_HEALTH_PORT": "0",
        "AGENT_NUM_IDLE_PROCESSES": "1",
        "AGENT_MAX_SESSIONS": str(MAX_SESSIONS),
        "AGENT_COUNT_CPU_LOAD": "false",  # the machine's CPU must not make tests flaky
        "AGENT_REPORT_TIMEOUT_S": "3",
        "AGENT_HEARTBEAT_INTERVAL_S": "0.5",
        "AGENT_WORKER_HEARTBEAT_INTERVAL_S": "0.5",
    }


@pytest.fixture(scope="module")
def worker_overrides() -> dict[str, str]:
    """Variables a test module sets on its agent worker (override this fixture)."""
    return {}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(
    sim: LiveKitSim,
    agent_redis_server: LocalRedis,
    agent_name: str,
    worker_overrides: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[AgentWorker]:
    env = {**worker_env(sim, agent_redis_server.url, agent_name), **worker_overrides}
    log_path: Path = tmp_path_factory.mktemp("agent") / "worker.log"
    process = AgentWorker(env, log_path).start()
    try:
        await process.wait_registered(agent_name)
        yield process
    finally:
        await process.stop()
