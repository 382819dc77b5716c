"""Failover in the orchestrator: however many signals of one agent's death arrive at once,
from however many workers, exactly one replacement is made and the room never goes without
its holder. The agent here is the protocol-level fake (it takes jobs; it never joins), and
the caller a participant of the sim."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import pytest
from arq import ArqRedis
from arq.worker import Worker

from livekit_sim import LiveKitSim
from orchestrator.jobs.context import of
from orchestrator.jobs.exits import agent_exited
from orchestrator.jobs.fleet import WorkerWatch, worker_gone
from orchestrator.jobs.reconcile import reconcile_sessions
from orchestrator.settings import Settings
from orchestrator.store import queries
from orchestrator.store.record import Session
from orchestrator.store.sessions import SessionStore
from tasks import DispatchRequest, enqueue_dispatch, recent_results
from tasks.heartbeat import AgentJob, WorkerRecord, beat, beat_worker, leave_fleet, note_exit
from tasks.keys import (
    AGENT_WORKERS,
    ARQ_JOB_PREFIX,
    ARQ_RESULT_PREFIX,
    DUPLICATE_REPORTS_STREAM,
    agent_heartbeat_key,
    agent_worker_key,
    dispatch_job_id,
    room_claim_key,
    worker_gone_job_id,
)
from tasks.models import JobMetadata, session_id_for
from tests.orchestrator.conftest import RunWorker
from tests.orchestrator.test_dispatch import CREATE, job_result
from tests.support.claims import ClaimWatch
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PARTICIPANTS = "RoomService/ListParticipants"


def store(redis: ArqRedis) -> SessionStore:
    return SessionStore(redis, retention_s=60, event_retention_s=60)


async def running_session(
    sim: LiveKitSim, arq_redis: ArqRedis, agent_worker: AcceptingWorker, event_id: str, room: str
) -> Session:
    """A session whose agent took its job and beat once, with a caller in the room."""
    await sim.join_participant(room, "caller")
    await enqueue_dispatch(
        arq_redis, DispatchRequest(event_id=event_id, room=room, metadata={"order": "A-17"})
    )
    result = await job_result(arq_redis, dispatch_job_id(event_id))
    assert result["outcome"] == "dispatched"
    [job] = await eventually(
        lambda: [j for j in agent_worker.jobs if j.room.name == room], what="the job taken"
    )
    session_id = result["session_id"]
    await beat(arq_redis, session_id, AgentJob(job.dispatch_id, job.id, "AW_fake"))

    async def assigned() -> Session | None:
        found = await store(arq_redis).get(session_id)
        return found if found and found.status == "assigned" else None

    return await eventually(assigned, what="the session assigned")


def ctx_of(worker: Worker, job_id: str) -> dict[str, Any]:
    return {**worker.ctx, "job_id": job_id, "job_try": 1, "enqueue_time": None, "score": 0}


async def test_three_signals_of_one_death_at_once_make_one_replacement(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    settings: Settings,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
) -> None:
    settings = settings.model_copy(update={"agent_worker_timeout_s": 0.5})
    workers = [await run_worker(settings) for _ in range(3)]
    room = "r-three"
    session = await running_session(sim, arq_redis, agent_worker, "e-three", room)
    sid = session.session_id
    assert session.job_id is not None
    # The death, as each signal sees it: its job process exited; its worker's beat went
    # silent long ago (with the session in its record); its heartbeat is long silent too.
    long_ago = int(time.time() * 1000) - 60_000
    dead = WorkerRecord("AI_dead", "support-agent", "AW_fake", 2, {sid: "running"}, long_ago)
    await arq_redis.set(agent_worker_key(dead.instance), dead.to_json())
    await arq_redis.zadd(AGENT_WORKERS, {dead.instance: long_ago})
    await arq_redis.set(agent_heartbeat_key(sid), long_ago)
    claims = ClaimWatch(arq_redis, room)
    # Silence counts from Redis's start at the earliest: let it pass the grace and timeout.
    await eventually(lambda: redis_up_for_s(arq_redis, 1), what="Redis up for a second")

    await asyncio.gather(
        agent_exited(ctx_of(workers[0], "exit-note"), sid, session.job_id),
        worker_gone(ctx_of(workers[1], "gone"), dead.instance, long_ago),
        reconcile_sessions(ctx_of(workers[2], "reconcile")),
        agent_exited(ctx_of(workers[1], "exit-note-again"), sid, session.job_id),
    )

    old = await store(arq_redis).get(sid)
    assert old is not None
    assert old.status == "lost"
    new_id = session_id_for("e-three", restart=1)
    assert old.replaced_by == new_id
    reports = collections.Counter(e.report.session_id for e in await recent_results(arq_redis, 100))
    assert reports[sid] == 1
    assert await arq_redis.xlen(DUPLICATE_REPORTS_STREAM) == 0  # the other signals: no-ops
    new = await eventually(lambda: dispatched(arq_redis, new_id), what="the replacement dispatched")
    assert (new.replaces, new.restart, new.event_id, new.room) == (sid, 1, "e-three", room)
    ours = [d for d in sim.dispatches(room) if d.agent_name]
    assert [JobMetadata.model_validate_json(d.metadata).session_id for d in ours] == [new_id]
    assert len([c for c in sim.calls_to(CREATE) if c.room == room]) == 2
    resume = JobMetadata.model_validate_json(ours[0].metadata)
    assert resume.metadata == {"order": "A-17"}
    assert resume.resume is not None
    assert (resume.resume.previous_session_id, resume.resume.attempt) == (sid, 1)
    assert await claims.stop() == [sid, new_id]
    assert await queries.chain(arq_redis, new) == [sid, new_id]


async def redis_up_for_s(redis: ArqRedis, seconds: int) -> bool:
    return int((await redis.info("server"))["uptime_in_seconds"]) >= seconds


async def dispatched(redis: ArqRedis, session_id: str) -> Session | None:
    found = await store(redis).get(session_id)
    return found if found and found.status in ("dispatched", "assigned") else None


async def test_an_ended_session_or_an_empty_room_gets_no_replacement(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker, agent_worker: AcceptingWorker
) -> None:
    session = await running_session(sim, arq_redis, agent_worker, "e-left", "r-left")
    await sim.leave_participant("r-left", "caller")
    assert session.job_id is not None

    await asyncio.gather(  # two signals of the death at once
        agent_exited(ctx_of(orchestrator, "exit"), session.session_id, session.job_id),
        agent_exited(ctx_of(orchestrator, "exit-again"), session.session_id, session.job_id),
    )

    ended = await store(arq_redis).get(session.session_id)
    assert ended is not None
    assert (ended.status, ended.replaced_by) == ("lost", None)
    assert await store(arq_redis).get(session_id_for("e-left", restart=1)) is None
    assert not await arq_redis.exists(room_claim_key("r-left"))
    reports = [e.report for e in await recent_results(arq_redis, 100)]
    assert [r.status for r in reports if r.session_id == session.session_id] == ["lost"]
    assert await arq_redis.xlen(DUPLICATE_REPORTS_STREAM) == 0


async def test_a_silent_worker_is_looked_into_once_and_one_that_stopped_cleanly_not_at_all(
    arq_redis: ArqRedis, settings: Settings, run_worker: RunWorker
) -> None:
    worker = await run_worker(settings.model_copy(update={"agent_worker_timeout_s": 0.3}))
    watch = WorkerWatch(of(worker.ctx))
    holding = WorkerRecord("AI_holding", "support-agent", "AW_1", 2, {"S_held": "running"})
    idle = WorkerRecord("AI_idle", "support-agent", "AW_2", 2, {})
    for record in (holding, idle):
        await beat_worker(arq_redis, record)
        await leave_fleet(arq_redis, record)  # both stop; one still held a session

    assert await arq_redis.zscore(AGENT_WORKERS, idle.instance) is None  # it left the list
    assert await eventually(watch.look, what="the silent worker handed on") == 1
    assert await watch.look() == 0  # handed on once
    last_beat = int(await arq_redis.zscore(AGENT_WORKERS, holding.instance))
    job = worker_gone_job_id(holding.instance, last_beat)
    assert await arq_redis.exists(ARQ_JOB_PREFIX + job, ARQ_RESULT_PREFIX + job)


async def test_a_livekit_error_in_the_middle_of_a_failover_is_tried_again(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    settings: Settings,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
) -> None:
    # A grace far past the test's patience: only the crash note's job, tried again, acts.
    await run_worker(settings.model_copy(update={"report_grace_s": 120.0}))
    session = await running_session(sim, arq_redis, agent_worker, "e-flaky", "r-flaky")
    assert session.job_id is not None
    sim.faults.set(PARTICIPANTS, error_rate=1.0, error_code="unavailable")

    await note_exit(arq_redis, session.session_id, session.job_id)  # through the queue
    await eventually(lambda: sim.calls_to(PARTICIPANTS), what="LiveKit asked, and failing")
    sim.faults.clear()

    new_id = session_id_for("e-flaky", restart=1)
    new = await eventually(lambda: dispatched(arq_redis, new_id), what="replaced after all")
    assert new.replaces == session.session_id
