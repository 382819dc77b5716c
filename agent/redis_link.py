"""A job process's connection to the orchestrator's Redis, and the session heartbeat on it.

The connection is made on first use, not at start-up: a session must run (and later report)
even if Redis is briefly away when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib

from arq import ArqRedis
from redis.exceptions import RedisError

from agent.log import get_logger
from tasks.connection import create_redis
from tasks.heartbeat import AgentJob, beat

REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
"""What a Redis call raises when the server is unreachable or slow: worth another try."""


class RedisLink:
    """One lazily made ArqRedis (JSON serializer) per session."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._redis: ArqRedis | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> ArqRedis:
        async with self._lock:
            if self._redis is None:
                self._redis = await create_redis(self._url)
            return self._redis

    async def aclose(self) -> None:
        async with self._lock:
            if self._redis is not None:
                with contextlib.suppress(*REDIS_ERRORS):
                    await self._redis.aclose()
                self._redis = None


class Heartbeat:
    """Refreshes the session's heartbeat key every `interval_s` until stopped; the
    orchestrator's reconciliation takes a stale heartbeat as the agent gone without a report.
    The first beat that lands also names `job`, which confirms the dispatch's assignment."""

    def __init__(
        self, link: RedisLink, session_id: str, interval_s: float, job: AgentJob | None = None
    ) -> None:
        self._link = link
        self._session_id = session_id
        self._interval_s = interval_s
        self._job = job
        self._task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()

    async def start(self, first_beat_timeout_s: float) -> None:
        """Start beating; returns after the first beat (or `first_beat_timeout_s`), so that
        a session is seen alive before its handler runs."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lkd_heartbeat")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_attempt.wait(), first_beat_timeout_s)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        log = get_logger()
        failing = False
        while True:
            try:
                redis = await asyncio.wait_for(self._link.get(), self._interval_s)
                await asyncio.wait_for(beat(redis, self._session_id, self._job), self._interval_s)
                self._job = None  # said once
                if failing:
                    log.info("heartbeat restored")
                failing = False
            except REDIS_ERRORS as exc:
                if not failing:
                    log.warning("heartbeat failed; retrying", error=f"{type(exc).__name__}: {exc}")
                failing = True
            self._first_attempt.set()
            await asyncio.sleep(self._interval_s)
