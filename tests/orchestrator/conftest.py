"""Fixtures: a LiveKitSim, orchestrator settings pointing at it and the test Redis, and an
orchestrator arq worker running in this process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from arq import ArqRedis
from arq.worker import Worker

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.settings import Settings
from tasks import create_redis
from tasks.keys import ARQ_RESULT_PREFIX, QUEUE_NAME
from tests.support.fake_worker import AcceptingWorker
from tests.support.orchestrator_worker import running_orchestrator, settings_for
from tests.support.sim import API_KEY, API_SECRET, MakeSim

AGENT = "support-agent"


@pytest.fixture
def own_redis() -> Iterator[LocalRedis]:
    """A Redis of the test's own (AOF on), which it may stop and start again."""
    with LocalRedis(appendonly=True) as server:
        yield server


@pytest.fixture
async def sim(make_sim: MakeSim) -> LiveKitSim:
    return await make_sim()


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


Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn_worker(redis_server: LocalRedis, sim: LiveKitSim, tmp_path: Path) -> Iterator[Spawn]:
    """Start `arq orchestrator.WorkerSettings` processes; their stderr goes to a file (a pipe
    nobody reads would fill up and block the worker), readable as `proc.log_path`."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(**overrides: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "REDIS_URL": redis_server.url, "LIVEKIT_URL": sim.url, "LIVEKIT_API_KEY": API_KEY,
            "LIVEKIT_API_SECRET": API_SECRET, "AGENT_NAME": AGENT, "LKD_JOB_TIMEOUT_S": "2",
            "LKD_ASSIGNMENT_CHECK_DELAY_S": "60", "LKD_RECONCILE_INTERVAL_S": "30",
            **overrides,
        }  # fmt: skip
        log_path = tmp_path / f"worker-{len(procs)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "arq", "orchestrator.WorkerSettings"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        proc.log_path = log_path  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def results(redis: ArqRedis, job_ids: list[str]) -> list[dict[str, Any]] | None:
    """The results of these arq jobs, once all have one."""
    raws = await redis.mget([ARQ_RESULT_PREFIX + j for j in job_ids])
    if any(r is None for r in raws):
        return None
    return [json.loads(r)["r"] for r in raws]


async def worker_checked_in(redis: ArqRedis) -> bool:
    """Whether an orchestrator worker is polling (each refreshes arq's health-check key)."""
    return bool(await redis.exists(QUEUE_NAME + ":health-check"))
