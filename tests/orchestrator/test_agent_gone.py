"""A session is `lost` only when its agent is gone by what LiveKit and our agent report: not
while an agent worker holds it (a job waiting for a process, a session starting), and not for
a silence that a Redis outage imposed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from arq import ArqRedis

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.store.sessions import now_ms
from tasks import keys, recent_results
from tasks.heartbeat import SessionHold, WorkerRecord, beat, beat_worker
from tests.orchestrator.conftest import RunWorker, make_settings
from tests.orchestrator.test_reconcile import claim, reconciler
from tests.orchestrator.test_sessions import dispatched, status_is
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

GRACE_S = 0.5


@contextlib.asynccontextmanager
async def worker_holding(
    redis: ArqRedis, sessions: dict[str, SessionHold]
) -> AsyncIterator[dict[str, SessionHold]]:
    """An agent worker's record, refreshed as our agent worker does, holding `sessions` (the
    dict may be changed while it runs)."""

    async def refresh() -> None:
        while True:
            record = WorkerRecord("AI_test", "support-agent", "AW_test", 10, dict(sessions))
            await beat_worker(redis, record)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(refresh())
    try:
        yield sessions
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def looked_at_past(redis: ArqRedis, session_id: str, at_ms: int) -> bool:
    """Whether reconciliation has looked at the session since `at_ms` (it schedules the next
    look each time it looks)."""
    due = await redis.zscore(keys.RECONCILE_DUE, session_id)
    return due is not None and due > at_ms


async def test_a_session_whose_job_waits_for_a_process_is_not_lost_until_its_worker_drops_it(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
) -> None:
    await run_worker(
        make_settings(redis_server, sim, agent_heartbeats=True, report_grace_s=GRACE_S)
    )
    sid = (await dispatched(arq_redis, "e-slow-start", "r-slow-start"))["session_id"]
    async with worker_holding(arq_redis, {sid: "starting"}) as held:
        session = await eventually(lambda: status_is(arq_redis, sid, "assigned"), what="assigned")
        # Well past the grace period, looked at again and again: the worker still holds it.
        past = (session.assigned_at or 0) + int(4 * GRACE_S * 1000)
        await eventually(lambda: looked_at_past(arq_redis, sid, past), what="looked at later")
        assert await status_is(arq_redis, sid, "assigned")

        del held[sid]  # its job process died before the session started
        await eventually(lambda: status_is(arq_redis, sid, "lost"), what="lost")
    [entry] = await recent_results(arq_redis)
    assert "never started its session, and no agent worker holds it" in (entry.report.error or "")


async def test_a_running_session_whose_heartbeat_stalls_is_lost_only_once_its_worker_drops_it(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
) -> None:
    await run_worker(
        make_settings(redis_server, sim, agent_heartbeats=True, report_grace_s=GRACE_S)
    )
    sid = (await dispatched(arq_redis, "e-stall", "r-stall"))["session_id"]
    await beat(arq_redis, sid)  # one beat, then silence
    started = now_ms()
    async with worker_holding(arq_redis, {sid: "running"}) as held:
        await eventually(lambda: status_is(arq_redis, sid, "assigned"), what="assigned")
        past = started + int(4 * GRACE_S * 1000)
        await eventually(lambda: looked_at_past(arq_redis, sid, past), what="looked at later")
        assert await status_is(arq_redis, sid, "assigned")

        del held[sid]  # the worker saw its job process exit
        await eventually(lambda: status_is(arq_redis, sid, "lost"), what="lost")
    [entry] = await recent_results(arq_redis)
    assert "stopped sending heartbeats" in (entry.report.error or "")


async def test_silence_during_a_redis_outage_is_not_read_as_death(
    sim: LiveKitSim, arq_redis: ArqRedis, redis_server: LocalRedis
) -> None:
    # Silence is also measured from Redis's own start (a restart loses no heartbeat worth
    # reading): let the test server have been up longer than the grace period.
    async def uptime_s() -> int:
        return int((await arq_redis.info("server"))["uptime_in_seconds"])

    await eventually(lambda: _at_least(uptime_s, 2), timeout_s=5, what="Redis up 2 s")
    async with reconciler(
        sim, arq_redis, redis_server, agent_heartbeats=True, report_grace_s=1.0,
        assignment_check_delay_s=600.0,
    ) as (_, store, reconcile):  # fmt: skip
        await claim(store, "s-quiet")
        assert await store.transition(
            "s-quiet", ("claimed",), status="assigned", dispatched_at=now_ms(), assigned_at=now_ms()
        )
        await arq_redis.set(keys.agent_heartbeat_key("s-quiet"), now_ms() - 60_000)
        await arq_redis.zadd(keys.RECONCILE_DUE, {"s-quiet": now_ms()})
        # Redis was away until half a second ago: the agent could not beat meanwhile.
        await arq_redis.hset(keys.REDIS_OUTAGE, mapping={"ended_ms": now_ms() - 500})
        counts = await reconcile()
        assert (counts["checked"], counts["lost"]) == (1, 0)
        assert await store.room_holder("r-s-quiet") == "s-quiet"

        # Once the grace has passed since Redis came back, with no beat since, it is lost.
        await arq_redis.hset(keys.REDIS_OUTAGE, mapping={"ended_ms": now_ms() - 1_500})
        await arq_redis.zadd(keys.RECONCILE_DUE, {"s-quiet": now_ms()})
        counts = await reconcile()
        assert (counts["checked"], counts["lost"]) == (1, 1)


async def _at_least(read: Callable[[], Awaitable[int]], value: int) -> bool:
    return await read() >= value


async def test_a_session_whose_report_waits_in_the_queue_is_not_lost(
    sim: LiveKitSim, arq_redis: ArqRedis, redis_server: LocalRedis
) -> None:
    """The session ended (no more heartbeats) and its agent queued its report, which waits
    longer than the grace: the worker that took it was killed, arq runs it again later."""
    async with reconciler(
        sim, arq_redis, redis_server, agent_heartbeats=True, report_grace_s=1.0,
        assignment_check_delay_s=600.0,
    ) as (_, store, reconcile):  # fmt: skip
        await claim(store, "s-queued")
        assert await store.transition(
            "s-queued", ("claimed",), status="assigned", job_id="AJ_queued",
            dispatched_at=now_ms(), assigned_at=now_ms(),
        )  # fmt: skip
        await arq_redis.set(keys.agent_heartbeat_key("s-queued"), now_ms() - 60_000)
        report_job = keys.report_job_id("s-queued", "AJ_queued")
        await arq_redis.set(keys.ARQ_JOB_PREFIX + report_job, b"{}", px=60_000)

        await arq_redis.zadd(keys.RECONCILE_DUE, {"s-queued": now_ms()})
        counts = await reconcile()
        assert (counts["checked"], counts["lost"]) == (1, 0)

        await arq_redis.delete(keys.ARQ_JOB_PREFIX + report_job)  # it ran, and was no report
        await arq_redis.zadd(keys.RECONCILE_DUE, {"s-queued": now_ms()})
        counts = await reconcile()
        assert (counts["checked"], counts["lost"]) == (1, 1)
