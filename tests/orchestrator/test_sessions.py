"""The end of sessions: reports, duplicates, end requests, reconciliation of lost agents."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from arq import ArqRedis
from arq.worker import Worker

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.store.record import Session
from orchestrator.store.sessions import Lease, SessionStore
from tasks import (
    DispatchRequest,
    EndSessionRequest,
    SessionReport,
    enqueue_dispatch,
    enqueue_end_session,
    enqueue_session_report,
    recent_results,
)
from tasks.heartbeat import beat
from tasks.keys import ARQ_RESULT_PREFIX, DUPLICATE_REPORTS_STREAM, RESULTS_STREAM
from tests.orchestrator.conftest import RunWorker, make_settings
from tests.orchestrator.test_dispatch import CREATE, job_result
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def store(redis: ArqRedis) -> SessionStore:
    return SessionStore(redis, retention_s=3600, event_retention_s=3600)


async def dispatched(redis: ArqRedis, event_id: str, room: str) -> dict[str, Any]:
    job = await enqueue_dispatch(redis, DispatchRequest(event_id=event_id, room=room))
    result = await job_result(redis, job.job_id)
    assert result["outcome"] == "dispatched", result
    return result


async def status_is(redis: ArqRedis, session_id: str, *statuses: str) -> Session | None:
    session = await store(redis).get(session_id)
    return session if session and session.status in statuses else None


def agent_report(session_id: str, room: str, **fields: Any) -> SessionReport:
    values: dict[str, Any] = {
        "session_id": session_id, "event_id": "e", "room": room, "status": "completed",
        "end_reason": "caller hung up", "started_at": datetime.now(UTC),
    }  # fmt: skip
    values.update(fields)
    return SessionReport(**values)


async def test_agent_report_is_filed_once_and_frees_the_room(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    first = await dispatched(arq_redis, "e-report", "r-report")
    sid = first["session_id"]
    await enqueue_session_report(arq_redis, agent_report(sid, "r-report", event_id="e-report"))
    await eventually(lambda: status_is(arq_redis, sid, "completed"), what="session completed")
    [entry] = await recent_results(arq_redis)
    assert entry.report.session_id == sid
    assert entry.report.end_reason == "caller hung up"
    raw = await arq_redis.xrange(RESULTS_STREAM)
    fields = raw[0][1]
    assert fields[b"session_id"] == sid.encode()
    assert fields[b"status"] == b"completed"
    assert await store(arq_redis).room_holder("r-report") is None

    # A second report for the same session is kept aside, not appended.
    await enqueue_session_report(
        arq_redis, agent_report(sid, "r-report", status="failed", error="x")
    )
    await eventually(lambda: arq_redis.xlen(DUPLICATE_REPORTS_STREAM), what="duplicate recorded")
    assert await arq_redis.xlen(RESULTS_STREAM) == 1

    # The room is free: the next event for it dispatches a new agent.
    second = await dispatched(arq_redis, "e-report-2", "r-report")
    assert second["session_id"] != sid
    assert len(sim.calls_to(CREATE)) == 2


async def test_a_report_job_that_runs_again_is_not_a_duplicate(
    arq_redis: ArqRedis, orchestrator: Worker, sim: LiveKitSim
) -> None:
    """A worker killed after filing a report and before arq recorded the job done: arq runs
    the same job again, and that is no second report."""
    sid = (await dispatched(arq_redis, "e-again", "r-again"))["session_id"]
    report = agent_report(sid, "r-again", event_id="e-again")
    job = await enqueue_session_report(arq_redis, report, nonce="AJ_again")
    assert (await job_result(arq_redis, job.job_id))["outcome"] == "filed"

    await arq_redis.delete(ARQ_RESULT_PREFIX + job.job_id)  # as if its end was never recorded
    again = await enqueue_session_report(arq_redis, report, nonce="AJ_again")
    assert again.job_id == job.job_id
    assert (await job_result(arq_redis, job.job_id))["outcome"] == "filed"
    assert await arq_redis.xlen(DUPLICATE_REPORTS_STREAM) == 0
    assert await arq_redis.xlen(RESULTS_STREAM) == 1


async def test_end_session_by_room_deletes_the_dispatch(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker, agent_worker: AcceptingWorker
) -> None:
    result = await dispatched(arq_redis, "e-end", "r-end")
    sid = result["session_id"]
    await eventually(lambda: status_is(arq_redis, sid, "assigned"), what="assigned")
    await enqueue_end_session(arq_redis, EndSessionRequest(room="r-end", reason="ticket closed"))
    await eventually(lambda: status_is(arq_redis, sid, "ending"), what="ending")
    await eventually(lambda: agent_worker.terminated, what="agent job terminated")
    assert [d.id for d in sim.dispatches("r-end") if d.id == result["dispatch_id"]] == []
    assert sim.room("r-end") is not None  # the room itself stays
    # The agent reports why it ended; that report closes the session.
    await enqueue_session_report(arq_redis, agent_report(sid, "r-end", end_reason="ticket closed"))
    await eventually(lambda: status_is(arq_redis, sid, "completed"), what="completed")


async def test_end_session_by_id_can_delete_the_room(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker, agent_worker: AcceptingWorker
) -> None:
    sid = (await dispatched(arq_redis, "e-delroom", "r-delroom"))["session_id"]
    await eventually(lambda: status_is(arq_redis, sid, "assigned"), what="assigned")
    await enqueue_end_session(arq_redis, EndSessionRequest(session_id=sid, delete_room=True))
    await eventually(lambda: sim.room("r-delroom") is None, what="room deleted")
    await eventually(lambda: agent_worker.terminated, what="agent job terminated")


async def test_end_session_before_any_agent_joined_closes_it_at_once(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    sid = (await dispatched(arq_redis, "e-early", "r-early"))["session_id"]
    await enqueue_end_session(arq_redis, EndSessionRequest(session_id=sid))
    session = await eventually(lambda: status_is(arq_redis, sid, "completed"), what="closed")
    assert "ended before an agent joined" in session.end_reason
    assert await store(arq_redis).room_holder("r-early") is None


async def test_agent_that_dies_silently_is_reported_lost_then_room_dispatches_again(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker, agent_worker: AcceptingWorker
) -> None:
    sid = (await dispatched(arq_redis, "e-lost", "r-lost"))["session_id"]
    await eventually(lambda: status_is(arq_redis, sid, "assigned"), what="assigned")
    await beat(arq_redis, sid)  # the agent was alive once, then its process was killed
    session = await eventually(
        lambda: status_is(arq_redis, sid, "lost"), timeout_s=15, what="session lost"
    )
    [entry] = await recent_results(arq_redis)
    assert entry.report.status == "lost"
    assert entry.report.source == "orchestrator"
    assert "stopped sending heartbeats" in (entry.report.error or "")
    assert session.job_id == entry.report.job_id
    # The zombie's dispatch is withdrawn, so the next agent is alone in the room.
    assert [d for d in sim.dispatches("r-lost") if d.agent_name] == []
    again = await dispatched(arq_redis, "e-lost-2", "r-lost")
    assert again["session_id"] != sid


async def test_session_whose_room_vanished_is_reported_lost(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker, agent_worker: AcceptingWorker
) -> None:
    sid = (await dispatched(arq_redis, "e-gone", "r-gone"))["session_id"]
    await eventually(lambda: status_is(arq_redis, sid, "assigned"), what="assigned")
    await sim.close_room("r-gone")  # e.g. the room's timeout; the agent never reports
    await eventually(lambda: status_is(arq_redis, sid, "lost"), timeout_s=15, what="lost")
    [entry] = await recent_results(arq_redis)
    assert "LiveKit saw the agent go" in (entry.report.error or "")


async def test_claim_left_by_a_terminal_session_is_freed(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    sid = (await dispatched(arq_redis, "e-orphan", "r-orphan"))["session_id"]
    await enqueue_session_report(arq_redis, agent_report(sid, "r-orphan"))
    await eventually(lambda: status_is(arq_redis, sid, "completed"), what="completed")
    # A crash between steps left the claim behind.
    await arq_redis.set("lkd:room:r-orphan", sid)

    async def freed() -> bool:
        return await arq_redis.exists("lkd:room:r-orphan") == 0

    await eventually(freed, timeout_s=5, what="claim freed")


async def test_a_claim_left_behind_does_not_keep_the_room_from_its_next_session(
    arq_redis: ArqRedis,
) -> None:
    """Why sweeping orphan claims can be slow housekeeping: the claim script takes over a
    claim whose session has ended, or whose record is gone."""
    sessions = store(arq_redis)
    try:
        for holder, ended in (("S_ended", True), ("S_vanished", False)):
            first = await sessions.claim(
                session_id=holder, generation=0, event_id=f"e-{holder}", room="r-left",
                agent_name="support-agent", enqueued_ms=0, dispatch_job="-",
                lease=Lease(f"test-{holder}", 60_000),
            )  # fmt: skip
            assert first.kind == "claimed"
            if ended:
                assert await sessions.file_report(agent_report(holder, "r-left")) == "filed"
            else:
                await arq_redis.delete(f"lkd:session:{holder}")
            await arq_redis.set("lkd:room:r-left", holder)  # a crash between steps
            nxt = await sessions.claim(
                session_id=f"{holder}-next", generation=0, event_id=f"e-{holder}-next",
                room="r-left", agent_name="support-agent", enqueued_ms=0, dispatch_job="-",
                lease=Lease(f"test-{holder}-next", 60_000),
            )  # fmt: skip
            assert (nxt.kind, nxt.session_id) == ("claimed", f"{holder}-next")
            assert await sessions.room_holder("r-left") == f"{holder}-next"
            await sessions.file_report(agent_report(f"{holder}-next", "r-left"))
    finally:
        await sessions.aclose()


async def test_lost_assignment_check_is_restored_by_reconciliation(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    result = await dispatched(arq_redis, "e-noconfirm", "r-noconfirm")
    # A crash right after the dispatch was recorded: its assignment check was never queued.
    confirm_id = f"confirm:{result['session_id']}:{result['dispatch_id']}"
    assert await arq_redis.delete(f"arq:job:{confirm_id}") == 1
    await arq_redis.zrem("arq:queue", confirm_id)
    # No worker serves the agent name, so the restored check ends the session as failed.
    await eventually(
        lambda: status_is(arq_redis, result["session_id"], "failed"), timeout_s=15, what="failed"
    )
    [entry] = await recent_results(arq_redis)
    assert "no agent worker accepted agent_name='support-agent'" in (entry.report.error or "")


async def test_agent_that_never_starts_its_session_is_reported_lost(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
) -> None:
    # The protocol-level fake worker takes the job but, like a job process killed at start-up,
    # never sends the heartbeat this project's agent sends first thing.
    await run_worker(make_settings(redis_server, sim, agent_heartbeats=True))
    sid = (await dispatched(arq_redis, "e-nostart", "r-nostart"))["session_id"]
    await eventually(lambda: status_is(arq_redis, sid, "lost"), timeout_s=15, what="lost")
    [entry] = await recent_results(arq_redis)
    assert "but never started its session" in (entry.report.error or "")
