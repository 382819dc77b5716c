"""The arq worker: `arq orchestrator.WorkerSettings`. This module only points at things."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import structlog
import uvloop
from arq import cron
from arq.worker import func

from orchestrator import logs
from orchestrator.errors import ConfigError, LiveKitError
from orchestrator.gateway import LiveKitGateway
from orchestrator.jobs.assignment import confirm_assignment
from orchestrator.jobs.context import CTX_KEY, Context
from orchestrator.jobs.dispatch import dispatch_agent
from orchestrator.jobs.end_session import end_session
from orchestrator.jobs.exits import agent_exited
from orchestrator.jobs.fleet import WorkerWatch, worker_gone
from orchestrator.jobs.line import dispatch_from_line, move_line
from orchestrator.jobs.reconcile import reconcile_sessions
from orchestrator.jobs.rejections import reject_malformed_job
from orchestrator.jobs.reports import session_report
from orchestrator.jobs.retries import TRIES_HEADROOM, as_arq_job
from orchestrator.metrics import shared
from orchestrator.settings import Settings, load_settings
from orchestrator.store.connections import (
    OUTAGE,
    create_jobs_redis,
    record_outage,
    worker_pool,
    worker_redis_settings,
)
from orchestrator.store.line import LineConfig
from orchestrator.store.sessions import SessionStore
from tasks import keys
from tasks.serialization import deserialize, serialize

log = structlog.get_logger("orchestrator.worker")

FLUSHER_KEY = "lkd_metrics_flusher"
WATCH_KEY = "lkd_worker_watch"


def _startup(settings: Settings) -> Any:
    async def on_startup(ctx: dict[str, Any]) -> None:
        logs.configure()
        gateway = LiveKitGateway(settings)
        try:
            await gateway.check_credentials()
        except LiveKitError as exc:
            await gateway.aclose()
            raise ConfigError(f"cannot start: {exc}") from None
        # The jobs' own connection fails fast on an outage (they are deferred, see
        # orchestrator.jobs.retries); arq's, in ctx["redis"], rides it out.
        redis = await create_jobs_redis(settings.redis_url)
        OUTAGE.on_end = partial(record_outage, redis)
        store = SessionStore(
            redis,
            retention_s=settings.session_retention_s,
            event_retention_s=settings.event_retention_s,
            record_linger_s=settings.record_linger_ms / 1000,
            first_check_s=settings.session_check_every_s,
            line=LineConfig(
                settings.agent_capacity, settings.agent_worker_timeout_s, settings.waiting_line
            ),
        )
        ctx[CTX_KEY] = context = Context(
            settings=settings, redis=redis, store=store, livekit=gateway
        )
        ctx[WATCH_KEY] = WorkerWatch(context).start()
        ctx[FLUSHER_KEY] = shared.Flusher(ctx["redis"], settings.metrics_flush_interval_s).start()
        log.info(
            "orchestrator worker started",
            livekit_url=settings.livekit_url,
            default_agent_name=settings.agent_name,
        )

    return on_startup


async def on_shutdown(ctx: dict[str, Any]) -> None:
    watch: WorkerWatch | None = ctx.get(WATCH_KEY)
    if watch is not None:
        await watch.stop()
    flusher: shared.Flusher | None = ctx.get(FLUSHER_KEY)
    if flusher is not None:
        await flusher.stop()
    context: Context | None = ctx.get(CTX_KEY)
    if context is not None:
        OUTAGE.on_end = None
        await context.store.aclose()
        await context.livekit.aclose()
        await context.redis.aclose()


def worker_settings(settings: Settings | None = None) -> dict[str, Any]:
    """The keyword arguments of arq's Worker for these settings."""
    settings = settings or load_settings()
    timeout = settings.job_timeout_s
    tries = settings.dispatch_max_tries + TRIES_HEADROOM
    interval = max(1, min(59, settings.reconcile_interval_s))
    jobs = (
        (keys.DISPATCH_AGENT, dispatch_agent),
        (keys.CONFIRM_ASSIGNMENT, confirm_assignment),
        (keys.DISPATCH_FROM_LINE, dispatch_from_line),
        (keys.MOVE_LINE, move_line),
        (keys.AGENT_EXITED, agent_exited),
        (keys.WORKER_GONE, worker_gone),
        (keys.END_SESSION, end_session),
        (keys.SESSION_REPORT, session_report),
        (keys.REJECT_MALFORMED_JOB, reject_malformed_job),
    )
    return {
        "functions": [
            func(as_arq_job(job), name=name, timeout=timeout, max_tries=tries) for name, job in jobs
        ],
        "cron_jobs": [
            cron(
                reconcile_sessions,
                name=keys.RECONCILE_SESSIONS,
                second=set(range(0, 60, interval)),
                timeout=timeout,
                run_at_startup=True,
            )
        ],
        "on_startup": _startup(settings),
        "on_shutdown": on_shutdown,
        "redis_settings": worker_redis_settings(settings.redis_url),
        "redis_pool": worker_pool(settings.redis_url),
        "queue_name": keys.QUEUE_NAME,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "poll_delay": settings.poll_delay_ms / 1000,
        "max_jobs": settings.max_jobs,
        "job_timeout": timeout,
        "keep_result": 3600,
        # arq's per-job lines are off (logs.configure); this spares building the result's.
        "log_results": False,
        "health_check_interval": keys.WORKER_HEALTH_CHECK_INTERVAL_S,
        "job_completion_wait": int(timeout),
    }


class _WorkerLoopPolicy(uvloop.EventLoopPolicy):  # type: ignore[misc]
    """The worker's event loop: uvloop, which took a tenth off the CPU cost of a dispatch
    (bench/dispatch_latency.py). arq sets up plain-text logging of its own after it loads
    WorkerSettings and before it creates the loop: the loop's creation takes logging back."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        logs.configure()
        loop: asyncio.AbstractEventLoop = super().new_event_loop()
        return loop


def build_worker_settings_class() -> type:
    """`arq orchestrator.WorkerSettings` reads a class's attributes; settings are read here,
    once, so a missing variable stops the worker at start-up with a message naming it."""
    logs.configure()
    try:
        attributes = worker_settings()
    except ConfigError as exc:
        log.error("cannot start", error=str(exc))
        raise SystemExit(2) from None
    asyncio.set_event_loop_policy(_WorkerLoopPolicy())
    return type("WorkerSettings", (), attributes)
