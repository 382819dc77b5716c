"""The waiting line: where an agent name's capacity is known, events beyond it wait for a free
slot, in order, and go the moment one frees; never more agents at once than the capacity,
by the sim's own record of the jobs its workers ran."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from arq import ArqRedis
from livekit import api
from livekit.protocol.agent_dispatch import JRP_NEVER

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.store import line
from orchestrator.store.record import SessionStatus
from orchestrator.store.sessions import now_ms
from tasks import (
    DispatchRequest,
    EndSessionRequest,
    enqueue_dispatch,
    enqueue_end_session,
    enqueue_session_report,
    recent_results,
    session_id_for,
)
from tasks.heartbeat import WorkerRecord, beat_worker
from tasks.keys import dispatch_job_id
from tasks.models import SessionReport
from tests.orchestrator.conftest import AGENT, RunWorker, make_settings
from tests.orchestrator.test_dispatch import job_result, store
from tests.support.events import new_event_id
from tests.support.fake_worker import AcceptingWorker
from tests.support.sim import API_KEY, API_SECRET
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def lkapi(sim: LiveKitSim) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(sim.url, API_KEY, API_SECRET)
    yield client
    await client.aclose()


def jobs_of(sim: LiveKitSim, session_id: str) -> list[Any]:
    return [j for j in sim.job_log if f'"session_id":"{session_id}"' in j.metadata]


async def send(
    redis: ArqRedis,
    *,
    priority: int = 0,
    expires_in_s: float | None = None,
    restart_policy: Literal["on_failure", "never"] = "on_failure",
) -> tuple[str, dict[str, Any]]:
    """One event for a room of its own, handled: its session id and its job's result."""
    event_id = new_event_id()
    expires = datetime.now(UTC) + timedelta(seconds=expires_in_s) if expires_in_s else None
    request = DispatchRequest(
        event_id=event_id,
        room=f"room-{event_id}",
        priority=priority,
        expires_at=expires,
        restart_policy=restart_policy,
    )
    await enqueue_dispatch(redis, request)
    return session_id_for(event_id), await job_result(redis, dispatch_job_id(event_id))


async def status(redis: ArqRedis, session_id: str) -> SessionStatus | None:
    session = await store(redis).get(session_id)
    return session.status if session else None


async def positions(redis: ArqRedis, session_ids: list[str]) -> dict[str, int]:
    """Each waiting session's place in the line."""
    config = line.LineConfig({AGENT: 0}, 10.0)
    found = {}
    for sid in session_ids:
        session = await store(redis).get(sid)
        assert session is not None
        place = await line.place(redis, config, session, now_ms())
        if place:
            found[sid] = place["queue_position"]
    return found


async def finish(redis: ArqRedis, lkapi: api.LiveKitAPI, session_id: str) -> None:
    """End a session as its agent does: it leaves the room (its job ends in the sim's
    record), then reports."""
    session = await store(redis).get(session_id)
    assert session is not None
    assert session.dispatch_id, session
    await lkapi.agent_dispatch.delete_dispatch(session.dispatch_id, session.room)
    report = SessionReport(
        session_id=session_id,
        event_id=session.event_id,
        room=session.room,
        status="completed",
        agent_name=AGENT,
        duration_s=30.0,
        end_reason="done",
    )
    await enqueue_session_report(redis, report)
    await eventually(
        lambda: _is(redis, session_id, SessionStatus.COMPLETED), what=f"{session_id} completed"
    )


async def _is(redis: ArqRedis, session_id: str, wanted: SessionStatus) -> bool:
    return await status(redis, session_id) == wanted


async def dispatched(redis: ArqRedis, session_id: str) -> bool:
    return await status(redis, session_id) in (SessionStatus.DISPATCHED, SessionStatus.ASSIGNED)


async def reports(redis: ArqRedis) -> dict[str, list[SessionReport]]:
    found: dict[str, list[SessionReport]] = {}
    for entry in await recent_results(redis, count=1000):
        found.setdefault(entry.report.session_id, []).append(entry.report)
    return found


async def test_a_burst_over_capacity_waits_in_line_and_goes_in_order(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
    lkapi: api.LiveKitAPI,
) -> None:
    await run_worker(make_settings(redis_server, sim, agent_capacity={AGENT: 5}))
    sent = await asyncio.gather(*(send(arq_redis) for _ in range(20)))
    outcomes = [result["outcome"] for _, result in sent]
    assert sorted(outcomes) == ["dispatched"] * 5 + ["waiting"] * 15
    waiting = [sid for sid, result in sent if result["outcome"] == "waiting"]
    places = await positions(arq_redis, waiting)
    assert sorted(places.values()) == list(range(1, 16))
    in_line = sorted(waiting, key=places.__getitem__)

    in_flight = [sid for sid, result in sent if result["outcome"] == "dispatched"]
    for nth, next_out in enumerate(in_line):
        await finish(arq_redis, lkapi, in_flight.pop(0))
        await eventually(lambda s=next_out: dispatched(arq_redis, s), what="the head let out")
        for later in in_line[nth + 1 :]:  # the rest still wait, in order
            assert await status(arq_redis, later) == SessionStatus.WAITING
        in_flight.append(next_out)
        assert (await positions(arq_redis, in_line[nth + 1 :])) == {
            sid: place for place, sid in enumerate(in_line[nth + 1 :], start=1)
        }
    for sid in in_flight:
        await finish(arq_redis, lkapi, sid)

    filed = await reports(arq_redis)
    assert len(filed) == 20
    assert {r.status for rs in filed.values() for r in rs} == {"completed"}
    assert all(len(rs) == 1 for rs in filed.values())
    assert all(len(jobs_of(sim, sid)) == 1 for sid, _ in sent)
    assert sim.most_jobs_at_once() == 5


async def test_a_higher_priority_goes_first_and_equal_ones_keep_their_order(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
    lkapi: api.LiveKitAPI,
) -> None:
    await run_worker(make_settings(redis_server, sim, agent_capacity={AGENT: 1}))
    busy, _ = await send(arq_redis)
    first, _ = await send(arq_redis)
    second, _ = await send(arq_redis)
    urgent, result = await send(arq_redis, priority=5)
    assert result == {"outcome": "waiting", "session_id": urgent, "queue_position": 1}
    assert await positions(arq_redis, [urgent, first, second]) == {urgent: 1, first: 2, second: 3}

    order = []
    current = busy
    for _ in range(3):
        await finish(arq_redis, lkapi, current)

        async def next_out() -> str | None:
            for sid in (urgent, first, second):
                if sid not in order and await dispatched(arq_redis, sid):
                    return sid
            return None

        current = await eventually(next_out, what="the next session let out")
        order.append(current)
    assert order == [urgent, first, second]


async def test_an_event_that_expires_in_line_ends_without_a_dispatch(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
    lkapi: api.LiveKitAPI,
) -> None:
    await run_worker(make_settings(redis_server, sim, agent_capacity={AGENT: 1}))
    busy, _ = await send(arq_redis)
    hung_up, result = await send(arq_redis, expires_in_s=1.0)
    behind, _ = await send(arq_redis)
    assert result["outcome"] == "waiting"

    await eventually(lambda: _is(arq_redis, hung_up, SessionStatus.FAILED), what="expired")
    (report,) = (await reports(arq_redis))[hung_up]
    assert report.end_reason == "expired"
    assert "expired" in (report.error or "")
    assert AGENT in (report.error or "")
    event = await arq_redis.hgetall(f"lkd:event:{report.event_id}")
    assert event[b"outcome"] == b"expired"
    assert await positions(arq_redis, [behind]) == {behind: 1}

    await finish(arq_redis, lkapi, busy)
    await eventually(lambda: dispatched(arq_redis, behind), what="the next one let out")
    assert jobs_of(sim, hung_up) == []
    assert not sim.dispatches(report.room)


async def test_ending_a_waiting_session_takes_it_out_of_the_line(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
    lkapi: api.LiveKitAPI,
) -> None:
    await run_worker(make_settings(redis_server, sim, agent_capacity={AGENT: 1}))
    busy, _ = await send(arq_redis)
    leaving, _ = await send(arq_redis)
    staying, _ = await send(arq_redis)

    await enqueue_end_session(arq_redis, EndSessionRequest(session_id=leaving, reason="hung up"))
    never, _ = await send(arq_redis, restart_policy="never")
    await eventually(lambda: _is(arq_redis, leaving, SessionStatus.COMPLETED), what="ended")
    (report,) = (await reports(arq_redis))[leaving]
    assert "hung up" in report.end_reason
    assert await positions(arq_redis, [staying]) == {staying: 1}

    await finish(arq_redis, lkapi, busy)
    await eventually(lambda: dispatched(arq_redis, staying), what="the next one let out")
    assert jobs_of(sim, leaving) == []
    # What the event asked goes with it out of the line: its restart policy, here.
    await finish(arq_redis, lkapi, staying)
    await eventually(lambda: dispatched(arq_redis, never), what="the last one let out")
    session = await store(arq_redis).get(never)
    assert session is not None
    [dispatch] = [d for d in sim.dispatches(session.room) if d.agent_name]
    assert dispatch.restart_policy == JRP_NEVER


def worker_record(instance: str, max_sessions: int, sessions: int = 0) -> WorkerRecord:
    return WorkerRecord(
        instance=instance,
        agent_name=AGENT,
        worker_id=f"AW_{instance}",
        max_sessions=max_sessions,
        sessions=dict.fromkeys((f"S_{instance}_{i}" for i in range(sessions)), "running"),
    )


async def test_our_workers_heartbeats_size_the_line_and_a_silent_one_takes_its_slots_away(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
    lkapi: api.LiveKitAPI,
) -> None:
    await run_worker(make_settings(redis_server, sim, agent_worker_timeout_s=1.0))
    await beat_worker(arq_redis, worker_record("one", 2), grew=True)
    sent = [await send(arq_redis) for _ in range(4)]
    assert [r["outcome"] for _, r in sent] == ["dispatched"] * 2 + ["waiting"] * 2

    # A second worker joins: the line moves on its first beat, with no session ending.
    await beat_worker(arq_redis, worker_record("one", 2))
    await beat_worker(arq_redis, worker_record("two", 2), grew=True)
    for sid, _ in sent[2:]:
        await eventually(lambda s=sid: dispatched(arq_redis, s), what="let out by a new worker")

    # Worker "one" goes silent (killed): only "two" counts, and its 2 slots are all in use.
    async def keep_two_beating() -> None:
        while True:
            await beat_worker(arq_redis, worker_record("two", 2))
            await asyncio.sleep(0.2)

    beating = asyncio.create_task(keep_two_beating())
    try:
        config = line.LineConfig({}, 1.0)
        await eventually(
            lambda: _capacity_is(arq_redis, config, 2), what="the silent worker's slots gone"
        )
        await finish(arq_redis, lkapi, sent[0][0])
        late, result = await send(arq_redis)
        assert result["outcome"] == "waiting"  # 3 in flight, 2 slots
        await finish(arq_redis, lkapi, sent[1][0])
        assert await status(arq_redis, late) == SessionStatus.WAITING
        await finish(arq_redis, lkapi, sent[2][0])
        await eventually(lambda: dispatched(arq_redis, late), what="a slot within capacity")
    finally:
        beating.cancel()


async def _capacity_is(redis: ArqRedis, config: line.LineConfig, wanted: int) -> bool:
    return (await line.line_state(redis, config, AGENT, now_ms())).capacity == wanted


async def test_a_dispatch_no_worker_takes_goes_back_to_the_head_of_the_line_not_to_failed(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    run_worker: RunWorker,
) -> None:
    # The capacity says 1 slot, but no worker is there: LiveKit drops every dispatch, far more
    # often than `assignment_attempts` (2) would allow a session without a line.
    await run_worker(make_settings(redis_server, sim, agent_capacity={AGENT: 1}))
    first, result = await send(arq_redis)
    second, _ = await send(arq_redis)
    assert result["outcome"] == "dispatched"

    async def dropped_often() -> bool:
        session = await store(arq_redis).get(first)
        return session is not None and session.attempts >= 4

    await eventually(dropped_often, what="dispatches dropped and the session sent back")
    assert await status(arq_redis, first) in (
        SessionStatus.WAITING,
        SessionStatus.CLAIMED,
        SessionStatus.DISPATCHED,
    )
    assert await status(arq_redis, second) == SessionStatus.WAITING  # never ahead of it

    worker = await AcceptingWorker(sim.url, API_KEY, API_SECRET, AGENT).start()
    try:
        await eventually(lambda: len(jobs_of(sim, first)) == 1, what="a worker took it")
        assert await status(arq_redis, second) == SessionStatus.WAITING
    finally:
        await worker.aclose()
    assert not await reports(arq_redis)  # nothing failed


async def test_three_workers_moving_one_line_skip_none_and_dispatch_none_twice(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
    lkapi: api.LiveKitAPI,
) -> None:
    settings = make_settings(redis_server, sim, agent_capacity={AGENT: 3})
    for _ in range(3):
        await run_worker(settings)
    sent = await asyncio.gather(*(send(arq_redis) for _ in range(24)))
    sessions = [sid for sid, _ in sent]
    rng = random.Random(7)

    async def in_flight() -> list[str]:
        return [sid for sid in sessions if await dispatched(arq_redis, sid)]

    done: set[str] = set()
    while len(done) < len(sessions):
        running = await eventually(in_flight, what="sessions in flight")
        batch = rng.sample(running, k=min(len(running), rng.randint(1, 3)))
        await asyncio.gather(*(finish(arq_redis, lkapi, sid) for sid in batch))
        done.update(batch)

    filed = await reports(arq_redis)
    assert sorted(filed) == sorted(sessions)
    assert all(len(rs) == 1 and rs[0].status == "completed" for rs in filed.values())
    assert all(len(jobs_of(sim, sid)) == 1 for sid in sessions)
    assert sim.most_jobs_at_once() <= 3


async def test_with_the_line_turned_off_every_event_is_dispatched_at_once(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
) -> None:
    settings = make_settings(redis_server, sim, agent_capacity={AGENT: 1}, waiting_line=False)
    await run_worker(settings)
    sent = [await send(arq_redis) for _ in range(3)]
    assert [result["outcome"] for _, result in sent] == ["dispatched"] * 3
