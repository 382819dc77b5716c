"""Real worker processes (`arq orchestrator.WorkerSettings`): concurrency and crashes."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
from typing import Any

import pytest
from arq import ArqRedis

from livekit_sim import LiveKitSim
from orchestrator.store.record import Session
from orchestrator.store.sessions import SessionStore
from tasks import DispatchRequest, enqueue_dispatch, enqueue_session_report
from tasks.heartbeat import AgentJob, beat, note_exit
from tasks.keys import room_claim_key
from tasks.models import SessionReport, session_id_for
from tests.orchestrator.conftest import Spawn, results, worker_checked_in
from tests.orchestrator.test_dispatch import CREATE
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

pytestmark = pytest.mark.system


async def test_burst_over_three_processes_makes_one_dispatch_per_room(
    sim: LiveKitSim, arq_redis: ArqRedis, spawn_worker: Spawn
) -> None:
    procs = [spawn_worker() for _ in range(3)]
    # Each worker announces itself with a health-check key once it polls the queue.
    await eventually(lambda: worker_checked_in(arq_redis), timeout_s=20, what="workers started")
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


async def test_worker_killed_after_create_dispatch_is_adopted_on_retry(
    sim: LiveKitSim, arq_redis: ArqRedis, spawn_worker: Spawn
) -> None:
    # LiveKit creates the dispatch but its answer is slow: the worker dies while waiting, after
    # CreateDispatch took effect and before the session state records it.
    sim.faults.set(CREATE, response_delay_ms=5_000)  # long enough to kill the worker meanwhile
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
    assert session.status == "dispatched"
    assert session.dispatch_id == dispatch.id


async def test_worker_killed_while_dispatching_again_leaves_one_dispatch_for_the_session(
    sim: LiveKitSim, arq_redis: ArqRedis, spawn_worker: Spawn, agent_worker: AcceptingWorker
) -> None:
    # The first dispatch reaches no worker (its job request goes unanswered, and LiveKit drops
    # it); the assignment check then dispatches again, and its worker dies after LiveKit made
    # that dispatch but before the answer came back.
    sim.workers.availability_timeout_s = 0.2
    sim.faults.workers_never_answer = True
    first = spawn_worker(LKD_ASSIGNMENT_CHECK_DELAY_S="0.5")
    job = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e-redo", room="r-redo"))
    [outcome] = await eventually(lambda: results(arq_redis, [job.job_id]), what="dispatched")
    session_id, dropped = outcome["session_id"], outcome["dispatch_id"]
    await sim.settle()  # its job request timed out: dropped
    sim.faults.workers_never_answer = False
    sim.faults.set(CREATE, response_delay_ms=5_000)
    await eventually(lambda: len(sim.calls_to(CREATE)) == 2, what="dispatched again")
    await eventually(lambda: len(ours(sim, "r-redo")) == 1, what="the new dispatch made")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    sim.faults.clear()

    spawn_worker(LKD_ASSIGNMENT_CHECK_DELAY_S="0.5")  # runs the check again after its expiry
    store = SessionStore(arq_redis, retention_s=60, event_retention_s=60)

    async def assigned() -> Session | None:
        session = await store.get(session_id)
        return session if session and session.status == "assigned" else None

    session = await eventually(assigned, timeout_s=40, what="the session assigned")
    [made] = ours(sim, "r-redo")
    assert made.id != dropped
    assert session.dispatch_id == made.id  # adopted, not made a third time
    assert len(sim.calls_to(CREATE)) == 2
    assert [job.dispatch_id for job in agent_worker.jobs] == [made.id]


def ours(sim: LiveKitSim, room: str) -> list[Any]:
    """The room's dispatches made by the orchestrator (not LiveKit's default one)."""
    return [d for d in sim.dispatches(room) if d.agent_name]


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


async def test_worker_killed_while_dispatching_from_the_line_leaves_one_dispatch(
    sim: LiveKitSim, arq_redis: ArqRedis, spawn_worker: Spawn, agent_worker: AcceptingWorker
) -> None:
    capacity = '{"support-agent": 1}'
    first = spawn_worker(LKD_AGENT_CAPACITY=capacity)
    busy = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e-busy", room="r-busy"))
    queued = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e-next", room="r-next"))
    busy_out, queued_out = await eventually(
        lambda: results(arq_redis, [busy.job_id, queued.job_id]), timeout_s=20, what="handled"
    )
    assert (busy_out["outcome"], queued_out["outcome"]) == ("dispatched", "waiting")

    # The busy session ends; the line moves and LiveKit is slow to answer the next dispatch:
    # the worker dies after the slot passed on and LiveKit made the dispatch.
    sim.faults.set(CREATE, response_delay_ms=5_000)
    store = SessionStore(arq_redis, retention_s=60, event_retention_s=60)
    session = await store.get(busy_out["session_id"])
    assert session is not None
    await enqueue_session_report(
        arq_redis,
        SessionReport(
            session_id=session.session_id, event_id="e-busy", room="r-busy", status="completed"
        ),
    )
    await eventually(lambda: ours(sim, "r-next"), timeout_s=20, what="the next one dispatched")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    sim.faults.clear()

    spawn_worker(LKD_AGENT_CAPACITY=capacity)  # runs the line's job again after its expiry

    async def dispatched() -> Session | None:
        found = await store.get(queued_out["session_id"])
        return found if found and found.status in ("dispatched", "assigned") else None

    session = await eventually(dispatched, timeout_s=40, what="the session let out dispatched")
    [dispatch] = ours(sim, "r-next")
    assert session.dispatch_id == dispatch.id
    assert len([c for c in sim.calls_to(CREATE) if c.room == "r-next"]) == 1


async def test_worker_killed_in_the_middle_of_a_replacement_leaves_one_agent(
    sim: LiveKitSim, arq_redis: ArqRedis, spawn_worker: Spawn, agent_worker: AcceptingWorker
) -> None:
    # A session's agent dies with a caller in the room; the worker that replaces it dies
    # after LiveKit made the replacement's dispatch and before the answer came back.
    first = spawn_worker(LKD_ASSIGNMENT_CHECK_DELAY_S="0.3")
    await sim.join_participant("r-fail", "caller")
    job = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e-fail", room="r-fail"))
    [outcome] = await eventually(lambda: results(arq_redis, [job.job_id]), what="dispatched")
    session_id = outcome["session_id"]
    [taken] = await eventually(lambda: agent_worker.jobs, what="the job taken")
    await beat(arq_redis, session_id, AgentJob(taken.dispatch_id, taken.id, "AW_fake"))
    store = SessionStore(arq_redis, retention_s=60, event_retention_s=60)

    async def has_status(sid: str, *statuses: str) -> Session | None:
        found = await store.get(sid)
        return found if found and found.status in statuses else None

    await eventually(lambda: has_status(session_id, "assigned"), what="the session assigned")
    sim.faults.set(CREATE, response_delay_ms=5_000)
    await note_exit(arq_redis, session_id, taken.id)  # its job process died
    replacement = session_id_for("e-fail", restart=1)
    await eventually(
        lambda: [d for d in ours(sim, "r-fail") if replacement in d.metadata],
        what="the replacement's dispatch made",
    )
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    sim.faults.clear()

    spawn_worker(LKD_ASSIGNMENT_CHECK_DELAY_S="0.3")  # runs the dispatch again after its expiry
    new = await eventually(
        lambda: has_status(replacement, "dispatched", "assigned"),
        timeout_s=40,
        what="the replacement recorded",
    )
    # The dead session's dispatch was deleted; the replacement's was adopted, not made twice.
    assert [d.id for d in ours(sim, "r-fail")] == [new.dispatch_id]
    assert new.replaces == session_id
    assert len([c for c in sim.calls_to(CREATE) if c.room == "r-fail"]) == 2
    old = await store.get(session_id)
    assert old is not None
    assert (old.status, old.replaced_by) == ("lost", replacement)
    assert await arq_redis.get(room_claim_key("r-fail")) == replacement.encode()
