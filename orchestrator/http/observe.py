"""Health, readiness and Prometheus metrics of the whole system.

/metrics shows the workers' counters and histograms as summed in Redis by every worker
(`orchestrator.metrics.shared`), gauges computed from Redis at scrape time (live sessions by
state, queue depth, dead letters, workers up, each agent name's capacity and line), and this
HTTP process's own counters. Scrape one replica of the HTTP service for the cluster-wide figures.
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from orchestrator.http.schemas import Check, Health
from orchestrator.http.service import Service, of
from orchestrator.http.spec import Route
from orchestrator.metrics import shared
from orchestrator.store import line, queries
from orchestrator.store.record import LIVE, SessionStatus
from tasks import keys

LOCAL = CollectorRegistry(auto_describe=True)
"""This HTTP process's own metrics (each replica counts what it received)."""

HTTP_REQUESTS = Counter(
    "lkd_http_requests_total",
    "HTTP API requests by route, method and status",
    ["route", "method", "status"],
    registry=LOCAL,
)
WEBHOOKS = Counter(
    "lkd_webhooks_received_total",
    "LiveKit webhooks received, by event and what was done",
    ["event", "outcome"],
    registry=LOCAL,
)


async def _redis_ok(svc: Service) -> Check:
    try:
        await svc.redis.ping()
    except (RedisError, OSError) as exc:
        now = time.monotonic()
        if svc.redis_down_since is None:
            svc.redis_down_since = now
        return Check(
            ok=False,
            detail=f"Redis unreachable at REDIS_URL for {now - svc.redis_down_since:.0f} s "
            f"({type(exc).__name__}); the workers wait for it and resume when it answers",
        )
    svc.redis_down_since = None
    return Check(ok=True, detail="PING answered")


def _health_reply(checks: dict[str, Check]) -> web.Response:
    failing = [name for name, check in checks.items() if not check.ok]
    health = Health(status="failing" if failing else "ok", failing=failing, checks=checks)
    return web.json_response(health.model_dump(mode="json"), status=503 if failing else 200)


async def healthz(request: web.Request) -> web.Response:
    svc = of(request)
    checks = {"redis": await _redis_ok(svc)}
    if checks["redis"].ok:
        ok, detail = await svc.worker_check()
        checks["worker"] = Check(ok=ok, detail=detail)
    else:
        checks["worker"] = Check(ok=False, detail="not checked: Redis is unreachable")
    return _health_reply(checks)


async def readyz(request: web.Request) -> web.Response:
    return _health_reply({"redis": await _redis_ok(of(request))})


async def _gauges(svc: Service) -> list[Metric]:
    redis = svc.redis
    live_ids = await redis.zrange(keys.LIVE_SESSIONS, 0, -1)
    async with redis.pipeline(transaction=False) as pipe:
        for sid in live_ids:
            pipe.hget(keys.session_key(sid.decode()), "status")
        statuses = await pipe.execute()
    by_status = {str(status): 0 for status in SessionStatus if status in LIVE}
    for status in statuses:
        if status is not None:
            name = status.decode()
            by_status[name] = by_status.get(name, 0) + 1
    active = GaugeMetricFamily(
        "lkd_active_sessions", "Sessions not yet terminal, by state", labels=["status"]
    )
    for name, count in by_status.items():
        active.add_metric([name], count)
    worker_ok, _ = await svc.worker_check()
    plain = {
        "lkd_queue_depth": ("Jobs waiting in the arq queue", await queries.queue_depth(redis)),
        "lkd_dead_letters": (
            "Entries on the dead-letter stream",
            await redis.xlen(keys.DEAD_LETTER_STREAM),
        ),
        "lkd_results": ("Entries on the results stream", await redis.xlen(keys.RESULTS_STREAM)),
        "lkd_worker_up": ("1 while an orchestrator worker checks in", int(worker_ok)),
    }
    gauges: list[Metric] = [active, *await _line_gauges(svc)]
    gauges += [GaugeMetricFamily(name, text, value=value) for name, (text, value) in plain.items()]
    return gauges


async def _line_gauges(svc: Service) -> list[Metric]:
    """Per agent name with a known capacity: its capacity, slots in use, sessions waiting."""
    capacity = GaugeMetricFamily(
        "lkd_agent_capacity",
        "Sessions at once the agent name's workers take (their heartbeats, or its static limit)",
        labels=["agent_name"],
    )
    in_use = GaugeMetricFamily(
        "lkd_agent_sessions", "Sessions holding a slot of the agent name", labels=["agent_name"]
    )
    waiting = GaugeMetricFamily(
        "lkd_waiting_sessions", "Sessions waiting in the agent name's line", labels=["agent_name"]
    )
    for state in await line.all_lines(svc.redis, svc.store.line, int(time.time() * 1000)):
        if state.capacity is not None:
            capacity.add_metric([state.agent_name], state.capacity)
        in_use.add_metric([state.agent_name], state.in_use)
        waiting.add_metric([state.agent_name], state.waiting)
    return [capacity, in_use, waiting]


async def prometheus(request: web.Request) -> web.Response:
    svc = of(request)
    summed = list(shared.families(await shared.read(svc.redis)))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(shared.StaticCollector(summed + await _gauges(svc)))
    text = generate_latest(registry) + generate_latest(LOCAL)
    return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE_LATEST})


ROUTES = [
    Route("GET", "/healthz", healthz, "Redis reachable and an orchestrator worker alive",
          "public", tag="operations", answer=Health, error_answers=((503, Health),)),
    Route("GET", "/readyz", readyz, "Redis reachable", "public", tag="operations",
          answer=Health, error_answers=((503, Health),)),
    Route("GET", "/metrics", prometheus, "Prometheus metrics", "public", tag="operations",
          media_type="text/plain; version=0.0.4"),
]  # fmt: skip
