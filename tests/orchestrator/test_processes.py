"""Real worker processes (`arq orchestrator.WorkerSettings`): concurrency and crashes."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from arq import ArqRedis

from livekit_sim import LiveKitSim
from orchestrator.local_redis import LocalRedis
from orchestrator.state import SessionStore
from tasks import DispatchRequest, enqueue_dispatch
from tasks.keys import ARQ_RESULT_PREFIX
from tests.orchestrator.conftest import AGENT, API_KEY, API_SECRET
from tests.orchestrator.test_dispatch import CREATE
from tests.support.waiting import eventually

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
    raws = await redis.mget([ARQ_RESULT_PREFIX + j for j in job_ids])
    if any(r is None for r in raws):
        return None
    return [json.loads(r)["r"] for r in raws]


async def test_burst_over_three_processes_makes_one_dispatch_per_room(
    sim: LiveKitSim, arq_redis: ArqRedis, spawn_worker: Spawn
) -> None:
    procs = [spawn_worker() for _ in range(3)]
    # Each worker announces itself with a health-check key once it polls the queue.
    await eventually(lambda: _health_keys(arq_redis, 1), timeout_s=20, what="workers started")
    requests = [
        DispatchRequest(event_id=f"burst-{i}", room=f"room-{i % 25}", metadata={"i": i})
        for i in range(500)
    ]
    jobs = await asyncio.gather(*(enqueue_dispatch(arq_redis, r) for r in requests))
    outcomes = await eventually(
        lambda: results(arq_redis, [j.job_id for j in jobs]), timeout_s=60, what="500 results"
    )
    assert all(p.poll() is None for p in procs), "a worker process died"
    counted = collections.Counter(o["outcome"] for o in outcomes)
    assert counted == {"dispatched": 25, "deduplicated": 475}
    assert len(sim.calls_to(CREATE)) == 25
    assert sorted(c.room for c in sim.calls_to(CREATE)) == sorted(f"room-{r}" for r in range(25))
    by_room: dict[str, set[str]] = collections.defaultdict(set)
    for request, outcome in zip(requests, outcomes, strict=True):
        by_room[request.room].add(outcome["session_id"])
    assert all(len(sessions) == 1 for sessions in by_room.values())


async def _health_keys(redis: ArqRedis, count: int) -> bool:
    return len([k async for k in redis.scan_iter(match="arq:queue:health-check")]) >= count


async def test_worker_killed_after_create_dispatch_is_adopted_on_retry(
    sim: LiveKitSim, arq_redis: ArqRedis, spawn_worker: Spawn
) -> None:
    # LiveKit creates the dispatch but its answer is slow: the worker dies while waiting, after
    # CreateDispatch took effect and before the session state records it.
    sim.faults.set(CREATE, response_delay_ms=60_000)
    first = spawn_worker()
    job = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e-kill", room="r-kill"))
    await eventually(lambda: sim.calls_to(CREATE), timeout_s=20, what="CreateDispatch arrived")
    await eventually(
        lambda: [d for d in sim.dispatches("r-kill") if d.agent_name], what="dispatch created"
    )
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    sim.faults.clear()

    spawn_worker()  # picks the job up once arq's in-progress key expires (timeout + 10 s)
    [outcome] = await eventually(
        lambda: results(arq_redis, [job.job_id]), timeout_s=40, what="retried job's result"
    )
    assert outcome["outcome"] == "dispatched"
    [dispatch] = [d for d in sim.dispatches("r-kill") if d.agent_name]
    assert outcome["dispatch_id"] == dispatch.id
    assert len(sim.calls_to(CREATE)) == 1
    session = await SessionStore(arq_redis, retention_s=60, event_retention_s=60).get(
        outcome["session_id"]
    )
    assert session is not None
    assert session["status"] == "dispatched"
    assert session["dispatch_id"] == dispatch.id


async def test_missing_setting_stops_the_worker_with_a_clear_message(
    spawn_worker: Spawn,
) -> None:
    proc = spawn_worker(LIVEKIT_URL="")
    await asyncio.to_thread(proc.wait, timeout=30)
    assert proc.returncode != 0
    assert "LIVEKIT_URL is not set" in proc.log_path.read_text()  # type: ignore[attr-defined]


async def test_rejected_credentials_stop_the_worker_at_start_up(spawn_worker: Spawn) -> None:
    proc = spawn_worker(LIVEKIT_API_SECRET="not-the-servers-secret-but-32-bytes-long")
    await asyncio.to_thread(proc.wait, timeout=30)
    assert proc.returncode != 0
    log = proc.log_path.read_text()  # type: ignore[attr-defined]
    assert "LiveKit rejected the credentials" in log
    assert "not-the-servers-secret" not in log
