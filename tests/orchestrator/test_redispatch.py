"""Dispatching again, as the assignment check does when no worker took a dispatch: as safe as
the first dispatch, whatever LiveKit answers and however often the step runs."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from arq import ArqRedis
from arq.worker import Worker

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.jobs.dispatch import dispatch_agent
from orchestrator.jobs.retries import as_arq_job
from orchestrator.store import dead_letters
from orchestrator.store.record import Session
from orchestrator.store.sessions import now_ms
from tasks import DispatchRequest, enqueue_dispatch, recent_results, session_id_for
from tasks.keys import ARQ_JOB_PREFIX, ARQ_RESULT_PREFIX, QUEUE_NAME, confirm_job_id
from tests.orchestrator.conftest import RunWorker, make_settings
from tests.orchestrator.test_dispatch import CREATE, job_result, store
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

GHOST = "ghost-agent"
"""An agent name no worker serves: every dispatch of it stays untaken."""


def session_dispatches(sim: LiveKitSim, room: str, session_id: str) -> list[Any]:
    return [
        d
        for d in sim.dispatches(room)
        if d.metadata and json.loads(d.metadata).get("session_id") == session_id
    ]


async def first_dispatch(redis: ArqRedis, event_id: str, room: str) -> dict[str, Any]:
    job = await enqueue_dispatch(
        redis, DispatchRequest(event_id=event_id, room=room, agent_name=GHOST)
    )
    result = await job_result(redis, job.job_id)
    assert result["outcome"] == "dispatched", result
    return result


async def test_a_dispatch_again_that_keeps_failing_ends_failed_with_a_replayable_dead_letter(
    sim: LiveKitSim, arq_redis: ArqRedis, redis_server: LocalRedis, run_worker: RunWorker
) -> None:
    await run_worker(make_settings(redis_server, sim, dispatch_max_tries=3))
    first = await first_dispatch(arq_redis, "e-redo-503", "r-redo-503")
    sid = first["session_id"]
    # Nobody took the first dispatch; LiveKit is down when the check dispatches again.
    sim.faults.set(CREATE, error_rate=1.0, error_code="unavailable")

    [entry] = await eventually(lambda: recent_results(arq_redis), timeout_s=20, what="a report")
    report = entry.report
    assert (report.session_id, report.status) == (sid, "failed")  # never had an agent: not lost
    assert "gave up after 3 tries" in (report.error or "")
    assert "unavailable" in (report.error or "")
    assert [c.code for c in sim.calls_to(CREATE)] == [
        "ok",
        "unavailable",
        "unavailable",
        "unavailable",
    ]
    assert session_dispatches(sim, "r-redo-503", sid) == []  # the untaken one was removed
    assert await store(arq_redis).room_holder("r-redo-503") is None
    [letter] = await dead_letters.recent(arq_redis)
    assert (letter.kind, letter.session_id, letter.replayable) == ("failed_dispatch", sid, True)

    sim.faults.clear()
    replayed = await job_result(arq_redis, await dead_letters.replay(arq_redis, letter.entry_id))
    assert replayed["outcome"] == "dispatched"
    assert replayed["session_id"] == session_id_for("e-redo-503", generation=1)


async def test_a_check_that_failed_for_good_is_queued_again_under_a_new_id(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    first = await first_dispatch(arq_redis, "e-check-failed", "r-check-failed")
    sid, dispatch_id = first["session_id"], first["dispatch_id"]
    # Its check ran and failed for good (a worker died on its last try): arq keeps that
    # result for an hour, so the same job id cannot be queued again.
    check = confirm_job_id(sid, dispatch_id)
    await arq_redis.delete(ARQ_JOB_PREFIX + check)
    await arq_redis.zrem(QUEUE_NAME, check)
    failed = {"s": False, "r": {"error": "JobExecutionFailed"}, "f": "confirm_assignment"}
    await arq_redis.set(ARQ_RESULT_PREFIX + check, json.dumps(failed), ex=3600)

    [entry] = await eventually(lambda: recent_results(arq_redis), timeout_s=20, what="a report")
    assert (entry.report.session_id, entry.report.status) == (sid, "failed")
    assert f"no agent worker accepted agent_name={GHOST!r}" in (entry.report.error or "")
    assert session_dispatches(sim, "r-check-failed", sid) == []


async def test_two_runs_of_one_dispatch_job_side_by_side_make_one_dispatch(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    # arq starts a job again when Redis lost its in-progress mark (an outage longer than the
    # mark's expiry) while an earlier run still lives: the two runs overlap.
    sim.faults.set(CREATE, latency_ms=300)
    event = {"event_id": "e-twins", "room": "r-twins"}
    job = as_arq_job(dispatch_agent)

    def run(job_try: int) -> Any:
        ctx = {
            **orchestrator.ctx,
            "job_id": "dispatch:e-twins",
            "job_try": job_try,
            "enqueue_time": datetime.now(UTC),
            "score": now_ms(),
        }
        return job(ctx, event)

    first, second = await asyncio.gather(run(2), run(3))

    # The later run waited for the first and reports what it did: one dispatch, one outcome.
    assert first["outcome"] == "dispatched"
    assert second == first
    assert len(sim.calls_to(CREATE)) == 1
    assert len(session_dispatches(sim, "r-twins", session_id_for("e-twins"))) == 1


async def test_a_dispatch_again_whose_answer_is_lost_is_found_and_kept(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
) -> None:
    await run_worker(make_settings(redis_server, sim, assignment_attempts=3))
    # The first dispatch's job request goes unanswered: LiveKit drops it.
    sim.workers.availability_timeout_s = 0.2
    sim.faults.workers_never_answer = True
    job = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e-lost-ans", room="r-la"))
    first = await job_result(arq_redis, job.job_id)
    await sim.settle()
    sim.faults.workers_never_answer = False
    # The check dispatches again: LiveKit makes the dispatch (a worker takes its job), but
    # the answer is lost on the way back.
    sim.faults.set(CREATE, lost_answer_rate=1.0)
    await eventually(lambda: agent_worker.jobs, what="the new dispatch's job taken")
    sim.faults.clear()

    sid = first["session_id"]
    session = await eventually(lambda: assigned(arq_redis, sid), what="the session assigned")
    [made] = session_dispatches(sim, "r-la", sid)
    assert made.id != first["dispatch_id"]
    assert session.dispatch_id == made.id
    assert [c.code for c in sim.calls_to(CREATE)] == ["ok", "lost_answer"]
    assert [j.dispatch_id for j in agent_worker.jobs] == [made.id]


async def assigned(redis: ArqRedis, session_id: str) -> Session | None:
    session = await store(redis).get(session_id)
    return session if session and session.status == "assigned" else None
