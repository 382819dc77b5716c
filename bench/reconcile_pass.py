"""One reconciliation pass over many live sessions, all due: how long it takes, and the longest
the worker's event loop stalled meanwhile (what a dispatch arriving during the pass waits on
top of its own work). Real Redis; sessions dispatched and healthy, so no LiveKit call is made.

    .venv/bin/python -m bench.reconcile_pass [--sessions 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop

from orchestrator.demo.local_redis import LocalRedis
from orchestrator.gateway import LiveKitGateway
from orchestrator.jobs import reconcile
from orchestrator.jobs.context import CTX_KEY, Context
from orchestrator.settings import Settings
from orchestrator.store.sessions import Lease, SessionStore
from tasks import create_redis

BATCH = 200


async def one_pass(redis_url: str, sessions: int) -> None:
    redis = await create_redis(redis_url)
    settings = Settings(
        redis_url=redis_url,
        livekit_url="http://127.0.0.1:9",  # never called: every session is healthy
        livekit_api_key="bench-key",
        livekit_api_secret="bench-secret-0123456789-abcdefghijklmnop",
        assignment_check_delay_s=3600,
    )
    store = SessionStore(redis, retention_s=3600, event_retention_s=3600)  # due at once
    gateway = LiveKitGateway(settings)
    ctx = {CTX_KEY: Context(settings=settings, redis=redis, store=store, livekit=gateway)}
    try:
        for start in range(0, sessions, BATCH):
            ids = range(start, min(sessions, start + BATCH))
            await asyncio.gather(*(claim_and_dispatch(store, i) for i in ids))
        stalls: list[float] = []
        passing = True

        async def watch_loop() -> None:
            while passing:
                asked = time.perf_counter()
                await asyncio.sleep(0.001)
                stalls.append(time.perf_counter() - asked - 0.001)

        watcher = asyncio.create_task(watch_loop())
        started = time.perf_counter()
        counts = await reconcile.reconcile_sessions(ctx)
        took = time.perf_counter() - started
        passing = False
        await watcher
        print(
            f"reconciliation pass over {counts['checked']} due sessions "
            f"(pages of {reconcile.PAGE}): {took * 1000:.0f} ms, "
            f"{took / max(1, counts['checked']) * 1e6:.0f} us per session; "
            f"longest event-loop stall {max(stalls) * 1000:.1f} ms"
        )
    finally:
        await store.aclose()
        await gateway.aclose()
        await redis.aclose()


async def claim_and_dispatch(store: SessionStore, i: int) -> None:
    session_id, event_id = f"S_bench{i}", f"bench-{i}"
    lease = Lease(f"bench-{i}", 3_600_000)
    await store.claim(
        session_id=session_id, generation=0, event_id=event_id, room=f"bench-room-{i}",
        agent_name="bench-agent", enqueued_ms=int(time.time() * 1000),
        dispatch_job=f"dispatch:{event_id}", lease=lease,
    )  # fmt: skip
    await store.mark_dispatched(
        session_id, event_id, "AD_bench", "{}", check_in_s=3600, attempt=1, lease=lease
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=5000)
    args = parser.parse_args()
    with LocalRedis() as server:
        uvloop.run(one_pass(server.url, args.sessions))


if __name__ == "__main__":
    main()
