"""The dashboard's read, `GET /v1/overview`, with no live session and with many: what one open
dashboard costs on every 2 s refresh. The live sessions are read as one page, pipelined
(`orchestrator.store.queries.live_sessions`), so the answer should not grow with their
number. Real Redis, the HTTP service in this process.

    .venv/bin/python -m bench.overview [--sessions 5000] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
from aiohttp import web

from bench.reconcile_pass import BATCH, claim_and_dispatch
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.http import create_app
from orchestrator.settings import Settings
from orchestrator.store.sessions import SessionStore
from tasks import create_redis

TOKEN = "bench-api-token-0123456789"


async def timings(url: str, requests: int) -> tuple[list[float], int]:
    """Milliseconds of each GET /v1/overview, one after the other, and the live count."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    took: list[float] = []
    async with aiohttp.ClientSession(base_url=url, headers=headers) as http:
        for _ in range(requests):
            started = time.perf_counter()
            async with http.get("/v1/overview") as resp:
                body = await resp.json()
                assert resp.status == 200, body
            took.append((time.perf_counter() - started) * 1000)
    return took, int(body["live_count"])


def figures(label: str, took: list[float], live: int) -> str:
    ordered = sorted(took)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return f"{label}: {live} live sessions, p50 {statistics.median(took):.1f} ms, p99 {p99:.1f} ms"


async def run(redis_url: str, sessions: int, requests: int) -> None:
    settings = Settings(
        redis_url=redis_url,
        livekit_url="http://127.0.0.1:9",  # never called by the overview
        livekit_api_key="bench-key",
        livekit_api_secret="bench-secret-0123456789-abcdefghijklmnop",
        api_token=TOKEN,
    )
    redis = await create_redis(redis_url)
    store = SessionStore(redis, retention_s=3600, event_retention_s=3600)
    runner = web.AppRunner(create_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        await timings(url, 10)  # warm-up
        print(figures("GET /v1/overview", *await timings(url, requests)), flush=True)
        for start in range(0, sessions, BATCH):
            ids = range(start, min(sessions, start + BATCH))
            await asyncio.gather(*(claim_and_dispatch(store, i) for i in ids))
        print(figures("GET /v1/overview", *await timings(url, requests)), flush=True)
    finally:
        await runner.cleanup()
        await store.aclose()
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with LocalRedis() as server:
        asyncio.run(run(server.url, args.sessions, args.requests))


if __name__ == "__main__":
    main()
