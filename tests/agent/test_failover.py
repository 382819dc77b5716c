"""Failover with the real agent worker: an agent that dies while people are in the room is
replaced by a new session for the same event and room, which gets the last checkpoint; where
nobody is left, where the event says `never`, or once the restart budget is spent, it is not.

The orchestrator runs in this process with a report grace of two minutes, far past the tests'
patience: only the fast signals (the worker's crash note, a worker's silent beat) act here.
The caller is a participant of the sim (no media: tests/media/test_failover.py has those).
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from arq import ArqRedis
from arq.worker import Worker

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.store import dead_letters
from orchestrator.store.record import Session
from orchestrator.store.sessions import SessionStore
from tasks import SessionReport, recent_results
from tasks.heartbeat import worker_records
from tasks.keys import room_claim_key
from tasks.models import session_id_for
from tests.agent.conftest import new_room, worker_env
from tests.agent.worker_process import AgentWorker
from tests.support.claims import ClaimWatch
from tests.support.events import send_event
from tests.support.orchestrator_worker import running_orchestrator, settings_for
from tests.support.waiting import eventually

pytestmark = [pytest.mark.system, pytest.mark.asyncio(loop_scope="module")]

CHECKPOINT = {"survey": "nps", "question": 4, "answers": [9, 7, 10]}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def orchestrator(
    agent_redis_server: LocalRedis, sim: LiveKitSim, agent_name: str, worker: AgentWorker
) -> AsyncIterator[Worker]:
    settings = settings_for(
        agent_redis_server.url,
        sim,
        agent_name,
        assignment_check_delay_s=1.0,
        report_grace_s=120,
        max_restarts=1,
        agent_worker_timeout_s=2.0,
        worker_watch_interval_s=0.2,
    )
    async with running_orchestrator(settings) as arq_worker:
        yield arq_worker


async def report_of(queue: ArqRedis, session_id: str) -> SessionReport:
    async def filed() -> SessionReport | None:
        for entry in await recent_results(queue, 1000):
            if entry.report.session_id == session_id:
                return entry.report
        return None

    report: SessionReport = await eventually(filed, timeout_s=30, what=f"report of {session_id}")
    return report


async def record(queue: ArqRedis, session_id: str) -> Session:
    session = await SessionStore(queue, retention_s=60, event_retention_s=60).get(session_id)
    assert session is not None
    return session


async def replacement_id(queue: ArqRedis, session_id: str, restart: int = 1) -> str:
    first = await record(queue, session_id)
    return session_id_for(first.event_id, first.generation, restart=restart)


def hold(tmp_path: Path, **extra: Any) -> tuple[dict[str, Any], Path]:
    release = tmp_path / "release"
    return {"mode": "hold", "release_file": str(release), **extra}, release


async def test_a_killed_job_process_is_replaced_and_its_checkpoint_reaches_the_new_agent(
    orchestrator: Worker, worker: AgentWorker, sim: LiveKitSim, queue: ArqRedis, tmp_path: Path
) -> None:
    room = new_room()
    await sim.join_participant(room, "caller")
    payload, release = hold(tmp_path, checkpoint=CHECKPOINT)
    first = await send_event(queue, room, payload)
    started = await worker.wait_log("session started", session_id=first)
    await worker.wait_log("checkpoint saved", session_id=first)
    second = await replacement_id(queue, first)
    watch = ClaimWatch(queue, room)

    os.kill(started["pid"], signal.SIGKILL)

    await worker.wait_log("session started", session_id=second)
    lost = await report_of(queue, first)
    assert (lost.status, lost.source, lost.replaced_by) == ("lost", "orchestrator", second)
    assert lost.error is not None
    assert "job process exited" in lost.error
    release.touch()
    new = await report_of(queue, second)
    assert (new.status, new.source, new.room, new.replaces) == ("completed", "agent", room, first)
    assert new.outputs["resume"] == {
        "previous_session_id": first,
        "attempt": 1,
        "previous_status": "lost",
        "previous_error": lost.error,
        "checkpoint": CHECKPOINT,
    }
    assert new.outputs["payload_keys"] == sorted(payload)  # the producer's payload, unchanged
    # The room had a holder all along: the dead session's, then its replacement's.
    assert await watch.stop() == [first, second, None]
    linked = await record(queue, second)
    assert (linked.replaces, linked.restart) == (first, 1)
    assert (await record(queue, first)).replaced_by == second


async def test_nobody_left_in_the_room_means_no_replacement(
    orchestrator: Worker, worker: AgentWorker, queue: ArqRedis, tmp_path: Path
) -> None:
    payload, _ = hold(tmp_path)
    first = await send_event(queue, new_room(), payload)
    started = await worker.wait_log("session started", session_id=first)

    os.kill(started["pid"], signal.SIGKILL)

    lost = await report_of(queue, first)
    assert (lost.status, lost.replaced_by) == ("lost", None)
    assert (await record(queue, first)).replaced_by is None
    assert not worker.find("session started", session_id=await replacement_id(queue, first))


async def test_an_event_that_says_never_gets_no_replacement(
    orchestrator: Worker, worker: AgentWorker, sim: LiveKitSim, queue: ArqRedis, tmp_path: Path
) -> None:
    room = new_room()
    await sim.join_participant(room, "caller")
    payload, _ = hold(tmp_path)
    first = await send_event(queue, room, payload, restart_policy="never")
    started = await worker.wait_log("session started", session_id=first)

    os.kill(started["pid"], signal.SIGKILL)

    lost = await report_of(queue, first)
    assert (lost.status, lost.replaced_by) == ("lost", None)
    assert sim.participants(room)  # the caller was there: the policy decided


async def test_past_the_restart_budget_the_session_fails_with_a_dead_letter(
    orchestrator: Worker, worker: AgentWorker, sim: LiveKitSim, queue: ArqRedis, tmp_path: Path
) -> None:
    room = new_room()
    await sim.join_participant(room, "caller")
    payload, _ = hold(tmp_path)
    first = await send_event(queue, room, payload)
    started = await worker.wait_log("session started", session_id=first)
    os.kill(started["pid"], signal.SIGKILL)
    second = await replacement_id(queue, first)
    started = await worker.wait_log("session started", session_id=second)

    os.kill(started["pid"], signal.SIGKILL)  # LKD_MAX_RESTARTS=1 here: no third agent

    failed = await report_of(queue, second)
    assert (failed.status, failed.end_reason, failed.replaces) == (
        "failed",
        "restart_budget_spent",
        first,
    )
    assert failed.error is not None
    assert "LKD_MAX_RESTARTS=1" in failed.error
    letters = [
        letter for letter in await dead_letters.recent(queue, 100) if letter.session_id == second
    ]
    assert [(letter.kind, letter.replayable) for letter in letters] == [("failed_dispatch", True)]
    assert not await queue.exists(room_claim_key(room))


async def test_a_dead_worker_is_replaced_on_the_other_one(
    orchestrator: Worker,
    sim: LiveKitSim,
    agent_redis_server: LocalRedis,
    queue: ArqRedis,
    tmp_path: Path,
) -> None:
    name = "failover-pair"
    env = {**worker_env(sim, agent_redis_server.url, name), "AGENT_MAX_SESSIONS": "1"}
    pair = [AgentWorker(env, tmp_path / f"worker-{i}.log").start() for i in range(2)]
    try:
        for one in pair:
            await one.wait_registered(name)
        room = new_room()
        await sim.join_participant(room, "caller")
        payload, release = hold(tmp_path)
        first = await send_event(queue, room, payload, agent_name=name)

        def running(session_id: str) -> AgentWorker | None:
            return next((w for w in pair if w.find("session started", session_id=session_id)), None)

        took = await eventually(lambda: running(first), timeout_s=30, what="a worker to take it")
        other = pair[1 - pair.index(took)]
        # Killed as soon as its session started: its worker beat as it accepted the job, so
        # its record names the session already.
        assert any(first in r.sessions for r in await worker_records(queue, 0))

        took.kill()

        second = await replacement_id(queue, first)
        await other.wait_log("session started", session_id=second)
        lost = await report_of(queue, first)
        assert lost.replaced_by == second
        assert lost.error is not None
        assert "agent worker stopped beating" in lost.error
        release.touch()
        assert (await report_of(queue, second)).status == "completed"
    finally:
        for one in pair:
            await one.stop()
