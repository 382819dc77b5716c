"""An orchestrator arq worker running in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from arq.worker import Worker

from livekit_sim import LiveKitSim
from orchestrator.jobs.context import CTX_KEY
from orchestrator.settings import Settings, load_settings
from orchestrator.worker import worker_settings
from tests.support.waiting import eventually


def settings_for(redis_url: str, sim: LiveKitSim, agent_name: str, **overrides: Any) -> Settings:
    """Orchestrator settings pointing at `redis_url` and `sim` (with the sim's own key), with
    the short timings tests want; `overrides` by field name."""
    values: dict[str, Any] = {
        "REDIS_URL": redis_url,
        "LIVEKIT_URL": sim.url,
        "LIVEKIT_API_KEY": sim.api_key,
        "LIVEKIT_API_SECRET": sim.api_secret,
        "AGENT_NAME": agent_name,
        "reconcile_interval_s": 1,
        "job_timeout_s": 10.0,
        **overrides,
    }
    return load_settings(**values)


@contextlib.asynccontextmanager
async def running_orchestrator(settings: Settings, **overrides: Any) -> AsyncIterator[Worker]:
    """Start a worker, wait for its start-up (raising its error if it failed), and stop it
    between two polls: cancelling it inside a Redis pipeline (a cron enqueue, a job pick-up)
    would leak that pipeline's connection."""
    worker = Worker(**{**worker_settings(settings), "handle_signals": False, **overrides})
    task = asyncio.create_task(worker.async_run())
    await eventually(lambda: CTX_KEY in worker.ctx or task.done(), what="orchestrator start-up")
    if task.done():
        task.result()
    try:
        yield worker
    finally:
        # Burst mode with a zero job budget makes the poll loop return at its next turn,
        # after waiting for running jobs.
        worker.burst, worker.max_burst_jobs = True, 0
        await asyncio.wait_for(asyncio.shield(task), timeout=30)
        await worker.close()
