"""A whole agent worker that died: its beat (`tasks.heartbeat.beat_worker`, every
AGENT_WORKER_HEARTBEAT_INTERVAL_S) goes silent. Each orchestrator worker watches for a beat
that has just passed LKD_AGENT_WORKER_TIMEOUT_S (`WorkerWatch`, every
LKD_WORKER_WATCH_INTERVAL_S) and queues one `worker_gone` job per silent worker and last beat,
so the sessions it held go to failover within about a second of the timeout, rather than
after reconciliation's report grace.

A beat missed because Redis was away is no death: silence counts from the end of the last
Redis outage or restart, as reconciliation counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from arq import Retry
from redis.exceptions import RedisError

from orchestrator.errors import LiveKitError
from orchestrator.jobs.context import Context, of
from orchestrator.jobs.exits import deferred
from orchestrator.jobs.failover import agent_died
from orchestrator.jobs.rejections import reject
from orchestrator.store.connections import UNREACHABLE
from orchestrator.store.sessions import now_ms
from tasks import heartbeat, keys
from tasks.connection import text
from tasks.producer import enqueue_job

log = structlog.get_logger("orchestrator.jobs.fleet")

WATCH_ERRORS: tuple[type[BaseException], ...] = (RedisError, *UNREACHABLE)
LOOKBACK_S = 60.0
"""How far past the timeout a silent worker is still handed on: one that died while no
orchestrator worker ran is left to reconciliation."""


async def quiet_since(c: Context) -> int:
    """No heartbeat could be written before this (unix ms): the end of the last Redis outage
    or restart."""
    uptime_s = int((await c.redis.info("server")).get("uptime_in_seconds", 0))
    outage_end = await c.redis.hget(keys.REDIS_OUTAGE, "ended_ms")  # type: ignore[misc]
    return max(now_ms() - uptime_s * 1000, int(outage_end or 0))


async def worker_gone(ctx: dict[str, Any], instance: Any, last_beat_ms: Any) -> dict[str, Any]:
    """The agent worker `instance` has not beaten since `last_beat_ms`: the sessions it held
    that no live worker holds now go to failover."""
    c = of(ctx)
    if not (isinstance(instance, str) and isinstance(last_beat_ms, int)):
        reason = "invalid worker_gone job: its arguments must be a worker instance and a time (ms)"
        return await reject(
            ctx, kind="invalid_job", reason=reason, payload=[instance, last_beat_ms]
        )
    timeout_ms = int(c.settings.agent_worker_timeout_s * 1000)
    silent_ms = now_ms() - max(last_beat_ms, await quiet_since(c))
    if silent_ms < timeout_ms:
        raise Retry(defer=(timeout_ms - silent_ms) / 1000)  # Redis was away: not yet
    raw = await c.redis.get(keys.agent_worker_key(instance))
    record = heartbeat.WorkerRecord.from_json(raw) if raw is not None else None
    if record is None or record.at_ms != last_beat_ms:
        return {"outcome": "moot"}  # it beat again
    alive = await heartbeat.worker_records(c.redis, now_ms() - timeout_ms)
    held = {sid for r in alive if r.instance != instance for sid in r.sessions}
    outcomes: dict[str, int] = {}
    # Its job processes do not outlive it: each stops once its pipe to the worker closes.
    # A worker only stuck past the timeout is taken for dead all the same: its sessions'
    # dispatches are deleted (failover.agent_died), so that its agents leave their rooms.
    for session, _ in await c.store.read_live(list(record.sessions)):
        if session is None or not session.live or session.session_id in held:
            continue
        try:
            outcome: str | None = await agent_died(
                c,
                session,
                f"its agent worker stopped beating {round(silent_ms / 1000, 1)} s ago "
                f"(LKD_AGENT_WORKER_TIMEOUT_S={c.settings.agent_worker_timeout_s:g}): the "
                "worker or its machine is gone",
            )
        except LiveKitError as exc:  # the sessions done so far are not looked at again
            outcome = deferred(ctx, session.session_id, exc)["outcome"]
        if outcome:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if outcomes:
        log.warning("agent worker gone", instance=instance, sessions=outcomes)
    return {"outcome": "handled", **outcomes}


class WorkerWatch:
    """Queues `worker_gone` for each agent worker whose beat has just passed the timeout."""

    def __init__(self, c: Context) -> None:
        self._c = c
        self._task: asyncio.Task[None] | None = None
        self._handed: set[tuple[str, int]] = set()

    def start(self) -> WorkerWatch:
        self._task = asyncio.create_task(self._run(), name="lkd-worker-watch")
        return self

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._c.settings.worker_watch_interval_s)
            try:
                await self.look()
            except WATCH_ERRORS as exc:
                log.debug("worker watch skipped: Redis unreachable", error=type(exc).__name__)
            except Exception:  # the watch must outlive any one look
                log.exception("watching agent workers failed")

    async def look(self) -> int:
        """Hand on the workers that went silent; how many were new."""
        timeout_ms = int(self._c.settings.agent_worker_timeout_s * 1000)
        now = now_ms()
        silent = await self._c.redis.zrangebyscore(
            keys.AGENT_WORKERS, now - timeout_ms - int(LOOKBACK_S * 1000), now - timeout_ms,
            withscores=True,
        )  # fmt: skip
        found = {(text(instance), int(at)) for instance, at in silent}
        for instance, at in found - self._handed:
            await enqueue_job(
                self._c.redis,
                keys.WORKER_GONE,
                instance,
                at,
                job_id=keys.worker_gone_job_id(instance, at),
            )
        new = len(found - self._handed)
        self._handed = found
        return new

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
