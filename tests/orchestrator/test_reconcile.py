"""Reconciliation passes called directly: a pass over more live sessions and room claims than
fit one page of its reads, and the schedule that spares sessions which are not due."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from arq import ArqRedis

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.gateway import LiveKitGateway
from orchestrator.jobs import reconcile
from orchestrator.jobs.context import CTX_KEY, Context
from orchestrator.jobs.reconcile import PAGE, reconcile_sessions
from orchestrator.settings import Settings
from orchestrator.store import queries
from orchestrator.store.sessions import Lease, SessionStore, now_ms
from tasks import keys
from tasks.heartbeat import beat
from tests.orchestrator.conftest import make_settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def reconciler(
    sim: LiveKitSim, arq_redis: ArqRedis, redis_server: LocalRedis, **settings: Any
) -> AsyncIterator[tuple[Settings, SessionStore, Callable[[], Awaitable[dict[str, int]]]]]:
    """Settings, the store and one reconciliation pass, as a worker would run them."""
    values = make_settings(redis_server, sim, **settings)
    store = SessionStore(arq_redis, retention_s=3600, event_retention_s=3600)
    gateway = LiveKitGateway(values)
    ctx = {CTX_KEY: Context(settings=values, redis=arq_redis, store=store, livekit=gateway)}
    try:
        yield values, store, lambda: reconcile_sessions(ctx)
    finally:
        await store.aclose()
        await gateway.aclose()


async def claim(store: SessionStore, session_id: str) -> None:
    claimed = await store.claim(
        session_id=session_id, generation=0, event_id=f"e-{session_id}", room=f"r-{session_id}",
        agent_name="support-agent", enqueued_ms=now_ms(), dispatch_job=f"dispatch:e-{session_id}",
        lease=Lease(f"test-{session_id}", 60_000),
    )  # fmt: skip
    assert claimed.kind == "claimed"


async def test_pass_covers_every_page_of_sessions_and_claims(
    sim: LiveKitSim, arq_redis: ArqRedis, redis_server: LocalRedis
) -> None:
    async with reconciler(
        sim, arq_redis, redis_server, agent_heartbeats=True, assignment_check_delay_s=600.0
    ) as (_, store, reconcile):
        await many_sessions_then_one_pass(sim, arq_redis, store, reconcile)


async def many_sessions_then_one_pass(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    store: SessionStore,
    reconcile: Callable[[], Awaitable[dict[str, int]]],
) -> None:
    healthy = [f"s-ok-{i}" for i in range(PAGE + 100)]
    vanished = [f"s-gone-{i}" for i in range(PAGE + 100)]
    await asyncio.gather(*(claim(store, sid) for sid in healthy + vanished))
    for sid in healthy:  # dispatched, and its agent's heartbeat is fresh
        assert await store.transition(
            sid, ("claimed",), status="dispatched", dispatched_at=now_ms()
        )
        await beat(arq_redis, sid)
    # The records of the others expired or were lost in a crash; their claims stayed.
    await arq_redis.delete(*(keys.session_key(sid) for sid in vanished))

    counts = await reconcile()

    assert counts["checked"] == len(healthy) + len(vanished)
    assert counts["claims_freed"] == len(vanished)
    assert (counts["lost"], counts["failed"], counts["adopted"]) == (0, 0, 0)
    live, count = await queries.live_sessions(arq_redis, limit=len(healthy) + len(vanished))
    assert sorted(s.session_id for s in live) == sorted(healthy)
    assert count == len(healthy)
    for sid in healthy:
        assert await store.room_holder(f"r-{sid}") == sid
    for sid in vanished:
        assert await store.room_holder(f"r-{sid}") is None
    assert not sim.calls  # nothing needed LiveKit


async def test_a_session_is_looked_at_again_when_a_rule_could_apply_not_every_pass(
    sim: LiveKitSim, arq_redis: ArqRedis, redis_server: LocalRedis
) -> None:
    async with reconciler(
        sim, arq_redis, redis_server, agent_heartbeats=True, report_grace_s=2.0,
        claim_stale_s=60.0, assignment_check_delay_s=600.0,
    ) as (settings, store, reconcile):  # fmt: skip
        grace_ms = int(settings.report_grace_s * 1000)
        await claim(store, "s-1")
        assert await store.transition(
            "s-1", ("claimed",), status="assigned", dispatched_at=now_ms(), assigned_at=now_ms()
        )
        last_beat = now_ms() - 500  # its agent's last heartbeat is half a second old
        await arq_redis.set(keys.agent_heartbeat_key("s-1"), last_beat)
        assert (await reconcile())["checked"] == 1
        # Nothing can apply before that heartbeat is grace_s old (silence counts from Redis's
        # start at the earliest: in a quick run it may have started a moment ago).
        due = await arq_redis.zscore(keys.RECONCILE_DUE, "s-1")
        expected = max(last_beat, await redis_started_ms(arq_redis)) + grace_ms
        assert abs(due - expected) <= 1000  # INFO counts uptime in whole seconds
        assert (await reconcile())["checked"] == 0
        # Once due, it is looked at again (here: its heartbeat stopped, it is lost).
        await eventually(lambda: up_for(arq_redis, 4), what="Redis up longer than the grace")
        await arq_redis.set(keys.agent_heartbeat_key("s-1"), now_ms() - grace_ms - 1_000)
        await arq_redis.zadd(keys.RECONCILE_DUE, {"s-1": now_ms()})
        counts = await reconcile()
        assert (counts["checked"], counts["lost"]) == (1, 1)
        assert await arq_redis.zscore(keys.RECONCILE_DUE, "s-1") is None
        lost = await store.get("s-1")
        assert lost is not None
        assert lost.status == "lost"


async def redis_started_ms(redis: ArqRedis) -> int:
    return now_ms() - int((await redis.info("server"))["uptime_in_seconds"]) * 1000


async def up_for(redis: ArqRedis, seconds: int) -> bool:
    return int((await redis.info("server"))["uptime_in_seconds"]) > seconds


async def test_a_new_session_is_first_looked_at_after_the_first_check_delay(
    sim: LiveKitSim, arq_redis: ArqRedis, redis_server: LocalRedis
) -> None:
    async with reconciler(sim, arq_redis, redis_server) as (settings, _, reconcile):
        store = SessionStore(
            arq_redis, retention_s=3600, event_retention_s=3600,
            first_check_s=settings.session_check_every_s,
        )  # fmt: skip
        try:
            before = now_ms()
            await claim(store, "s-new")
        finally:
            await store.aclose()
        due = await arq_redis.zscore(keys.RECONCILE_DUE, "s-new")
        assert due is not None
        assert due >= before + settings.session_check_every_s * 1000
        assert (await reconcile())["checked"] == 0


async def test_live_sessions_without_a_schedule_join_it_at_once(
    sim: LiveKitSim, arq_redis: ArqRedis, redis_server: LocalRedis
) -> None:
    """The schedule was lost (or restored from an older copy): the live set is the truth."""
    async with reconciler(sim, arq_redis, redis_server) as (_, store, reconcile):
        await claim(store, "s-old")
        await arq_redis.delete(keys.RECONCILE_DUE)
        await arq_redis.delete(keys.session_key("s-old"))  # and its record is gone since
        counts = await reconcile()
    assert (counts["checked"], counts["claims_freed"]) == (1, 1)
    assert await arq_redis.zcard(keys.LIVE_SESSIONS) == 0
    assert await arq_redis.zcard(keys.RECONCILE_DUE) == 0


async def test_orphan_claims_of_a_big_database_are_swept_over_several_passes(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconcile, "SWEEP_KEYS_PER_PASS", 1000)
    orphans = 3000  # claims left behind by sessions whose records are gone
    await arq_redis.mset({keys.room_claim_key(f"r-{i}"): f"s-{i}" for i in range(orphans)})
    async with reconciler(sim, arq_redis, redis_server) as (_, _, reconcile_pass):
        first = (await reconcile_pass())["claims_freed"]
        freed = [first]
        while sum(freed) < orphans and len(freed) < 20:
            freed.append((await reconcile_pass())["claims_freed"])
    assert 0 < first < orphans  # one pass covers a slice of the keyspace...
    assert sum(freed) == orphans  # ...and the next ones go on from there
    assert not await arq_redis.keys(keys.room_claim_key("*"))
