"""Health, readiness and /metrics: the workers' figures reach the HTTP service through Redis."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from arq import ArqRedis
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from orchestrator import metrics
from orchestrator.http import serve
from orchestrator.metrics import shared
from orchestrator.settings import Settings
from tasks import enqueue_session_report, keys
from tests.http.test_api import call, session_in
from tests.orchestrator.conftest import RunWorker
from tests.orchestrator.test_sessions import agent_report
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_healthz_needs_a_worker_and_readyz_only_redis(
    anonymous: aiohttp.ClientSession, settings: Settings, run_worker: RunWorker
) -> None:
    status, body = await call(anonymous, "GET", "/healthz")
    assert status == 503
    assert body["failing"] == ["worker"]
    assert body["checks"]["redis"]["ok"] is True
    assert "arq:queue:health-check" in body["checks"]["worker"]["detail"]
    status, body = await call(anonymous, "GET", "/readyz")
    assert (status, body["status"]) == (200, "ok")

    await run_worker(settings)

    async def healthy() -> Any:
        status, body = await call(anonymous, "GET", "/healthz")
        return body if status == 200 else None

    body = await eventually(healthy, what="worker's first check-in")  # its first poll
    assert (body["status"], body["failing"]) == ("ok", [])
    assert "j_complete" in body["checks"]["worker"]["detail"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus-client's own parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


async def scrape(client: aiohttp.ClientSession) -> dict[Any, float]:
    async with client.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return samples(await resp.text())


async def test_metrics_show_what_the_workers_did(
    client: aiohttp.ClientSession,
    arq_redis: ArqRedis,
    settings: Settings,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
) -> None:
    await run_worker(settings)
    await run_worker(settings)  # two workers in one process count each event once

    async def worker_up() -> dict[Any, float] | None:
        now = await scrape(client)
        return now if now[("lkd_worker_up", ())] == 1 else None

    before = await eventually(worker_up, what="worker's first check-in")
    assert before.get(("lkd_dispatch_outcomes_total", (("outcome", "dispatched"),)), 0) == 0

    _, first = await call(client, "POST", "/v1/dispatches", {"event_id": "m-1", "room": "r-m"})
    await eventually(lambda: session_in(client, first["session_id"], "assigned"), what="assigned")
    await call(client, "POST", "/v1/dispatches", {"event_id": "m-2", "room": "r-m"})

    def outcome(name: str) -> Any:
        return ("lkd_dispatch_outcomes_total", (("outcome", name),))

    async def counted() -> dict[Any, float] | None:
        now = await scrape(client)
        return now if now.get(outcome("deduplicated")) == 1 else None

    now = await eventually(counted, what="dedup counted")
    assert now[outcome("dispatched")] == 1
    assert now[("lkd_events_received_total", ())] >= 2
    assert now[("lkd_time_to_dispatch_seconds_count", ())] == 1
    assert now[("lkd_time_to_dispatch_seconds_bucket", (("le", "+Inf"),))] == 1
    create_ok = (("code", "ok"), ("method", "CreateDispatch"))
    assert now[("lkd_livekit_call_seconds_count", create_ok)] == 1
    assert now[("lkd_active_sessions", (("status", "assigned"),))] == 1
    assert ("lkd_queue_depth", ()) in now
    route = (("method", "POST"), ("route", "/v1/dispatches"), ("status", "202"))
    http_posts = ("lkd_http_requests_total", route)  # this process's own counter
    assert now[http_posts] - before.get(http_posts, 0) == 2

    await enqueue_session_report(arq_redis, agent_report(first["session_id"], "r-m"))

    async def reported() -> bool:
        now = await scrape(client)
        return now.get(("lkd_reports_total", (("status", "completed"),))) == 1

    await eventually(reported, what="report counted")
    after = await scrape(client)
    assert after[("lkd_active_sessions", (("status", "assigned"),))] == 0


async def test_counts_survive_a_failed_flush(redis: Redis) -> None:
    shared.take_delta()  # whatever earlier tests counted is not this test's
    await redis.delete(keys.METRICS)
    unreachable = Redis(host="127.0.0.1", port=1)
    metrics.REJECTED_JOBS.inc(3)
    try:
        await shared.flush(unreachable)
        raise AssertionError("flush to a closed port should fail")
    except (RedisConnectionError, OSError):
        pass
    finally:
        await unreachable.aclose()
    assert await shared.flush(redis) >= 1
    values = await shared.read(redis)
    assert values["lkd_rejected_jobs_total[]"] == 3
    assert await shared.flush(redis) == 0  # nothing new, nothing sent


async def test_serve_runs_until_cancelled(settings: Settings, arq_redis: ArqRedis) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = asyncio.create_task(serve(settings, host="127.0.0.1", port=port))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(base_url=url) as anon:

        async def ready() -> bool:
            try:
                status, _ = await call(anon, "GET", "/readyz")
            except aiohttp.ClientConnectionError:
                return False
            return status == 200

        await eventually(ready, what="service listening")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert not await ready()
