"""A reconciliation pass over more live sessions and room claims than fit one page of its
reads: every one is looked at, and only the ones that need it are changed."""

from __future__ import annotations

import asyncio

from arq import ArqRedis

from livekit_sim import LiveKitSim
from orchestrator.context import CTX_KEY, Context
from orchestrator.livekit_gateway import LiveKitGateway
from orchestrator.local_redis import LocalRedis
from orchestrator.reconcile import PAGE, reconcile_sessions
from orchestrator.state import SessionStore, now_ms
from tasks import keys
from tasks.heartbeat import beat
from tests.orchestrator.conftest import make_settings


async def test_pass_covers_every_page_of_sessions_and_claims(
    sim: LiveKitSim, arq_redis: ArqRedis, redis_server: LocalRedis
) -> None:
    settings = make_settings(
        redis_server, sim, agent_heartbeats=True, assignment_check_delay_s=600.0
    )
    store = SessionStore(arq_redis, retention_s=3600, event_retention_s=3600)
    healthy = [f"s-ok-{i}" for i in range(PAGE + 100)]
    vanished = [f"s-gone-{i}" for i in range(PAGE + 100)]
    await asyncio.gather(
        *(
            store.claim(
                session_id=sid, generation=0, event_id=f"e-{sid}", room=f"r-{sid}",
                agent_name="support-agent", enqueued_ms=now_ms(),
            )
            for sid in healthy + vanished
        )
    )  # fmt: skip
    for sid in healthy:  # dispatched, and its agent's heartbeat is fresh
        assert await store.transition(
            sid, ("claimed",), status="dispatched", dispatched_at=now_ms()
        )
        await beat(arq_redis, sid)
    # The records of the others expired or were lost in a crash; their claims stayed.
    await arq_redis.delete(*(keys.session_key(sid) for sid in vanished))

    gateway = LiveKitGateway(settings)
    ctx = {CTX_KEY: Context(settings=settings, redis=arq_redis, store=store, livekit=gateway)}
    try:
        counts = await reconcile_sessions(ctx)
    finally:
        await store.scripts.aclose()
        await gateway.aclose()

    assert counts["checked"] == len(healthy) + len(vanished)
    assert counts["claims_freed"] == len(vanished)
    assert (counts["lost"], counts["failed"], counts["adopted"]) == (0, 0, 0)
    assert sorted(await store.live_sessions()) == sorted(healthy)
    for sid in healthy:
        assert await store.room_holder(f"r-{sid}") == sid
    for sid in vanished:
        assert await store.room_holder(f"r-{sid}") is None
    assert not sim.calls  # nothing needed LiveKit
