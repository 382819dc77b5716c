"""The worker's two kinds of Redis connection, and how each meets an outage.

arq's own loop (polling the queue, starting jobs, recording their results, the health check)
rides an outage out: its commands wait, reconnecting with backoff, however long Redis is away,
so the worker neither exits nor loses what it was finishing (`worker_redis_settings`). The
outage is logged once when it starts and once when it ends, and its end is recorded in Redis
(`keys.REDIS_OUTAGE`) for `doctor` and for reconciliation, which must not read heartbeats that
could not be written as silence.

The jobs' own connection fails fast instead (`create_jobs_redis`): a job that meets an outage
is deferred with arq's Retry (`orchestrator.jobs_retry`) rather than hang past its timeout,
which arq would count as a failure it never retries.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog
from arq import ArqRedis
from arq.connections import RedisSettings, create_pool
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError, RedisError, TimeoutError

from orchestrator import metrics
from orchestrator.store import dead_letters
from tasks import keys
from tasks.connection import redis_settings
from tasks.serialization import MAX_RAW_KEPT_CHARS, deserialize, serialize

log = structlog.get_logger("orchestrator.redis")

T = TypeVar("T")

UNREACHABLE: tuple[type[BaseException], ...] = (
    ConnectionError,  # redis-py's, with BusyLoadingError: a restarted Redis loading its data
    TimeoutError,
    OSError,
    asyncio.TimeoutError,
    socket.timeout,
)
"""What a Redis call raises when the server is away, restarting or too slow: worth waiting for,
unlike an error Redis answered (ResponseError), which would say the same again."""

RECONNECT_BACKOFF = EqualJitterBackoff(cap=2.0, base=0.05)
"""Waits between reconnection attempts: doubling from 50 ms up to 2 s, with jitter."""
JOB_RETRIES = 2
"""Quick retries of a job's command (a stale connection after a restart) before it fails."""


class Outage:
    """This process's view of whether Redis answers: logged once when it stops answering,
    once when it answers again."""

    def __init__(self) -> None:
        self.since: float | None = None
        """When this outage began (unix s); None while Redis answers."""
        self.last: tuple[float, float] | None = None
        """(start, end) of the last outage that ended (unix s)."""
        self.stopping = False
        """The process is stopping: calls give up on an outage instead of waiting."""
        self.on_end: Callable[[float, float], Coroutine[Any, Any, None]] | None = None
        """Called (in a task of its own) with (start, end) when an outage ends."""
        self._tasks: set[asyncio.Task[None]] = set()

    def failed(self, error: BaseException) -> None:
        if self.since is None:
            self.since = time.time()
            log.warning(
                "Redis is unreachable; waiting for it, work resumes when it answers",
                error=f"{type(error).__name__}: {error}".rstrip(": "),
            )

    def answered(self) -> None:
        if self.since is None:
            return
        started, self.since = self.since, None
        ended = time.time()
        self.last = (started, ended)
        log.warning("Redis answers again", outage_s=round(ended - started, 3))
        if self.on_end is not None:
            task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
                self.on_end(started, ended)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


OUTAGE = Outage()
"""The one view per process: every connection of the worker's pool reports to it."""


class RideOut(Retry):
    """redis-py's Retry that never gives up on an unreachable Redis (until the process is
    stopping) and reports to `Outage`. Connections deep-copy their Retry: the copies share
    the one Outage, so an outage is logged once however many connections meet it."""

    __slots__ = ("_outage",)

    def __init__(self, outage: Outage = OUTAGE) -> None:
        super().__init__(copy.deepcopy(RECONNECT_BACKOFF), -1, UNREACHABLE)  # type: ignore[arg-type]
        self._outage = outage

    def __deepcopy__(self, memo: dict[int, Any]) -> RideOut:
        return RideOut(self._outage)

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Callable[[RedisError], Any]
    ) -> T:
        self._backoff.reset()  # type: ignore[no-untyped-call]
        failures = 0
        while True:
            try:
                result = await do()
            except self._supported_errors as error:
                failures += 1
                await fail(error)
                if self._outage.stopping:
                    raise
                self._outage.failed(error)
                try:
                    await asyncio.sleep(self._backoff.compute(failures))
                except asyncio.CancelledError:
                    # Only a stopping worker cancels arq's own calls: let the rest of its
                    # shutdown give up on Redis rather than wait for it.
                    self._outage.stopping = True
                    raise
            else:
                self._outage.answered()
                return result


class _RidingPipeline(Pipeline):
    """A pipeline whose WATCH outlives its connection: once Redis answers again, it watches the
    same keys on the new connection before it runs the command it was at. arq's loop reads
    inside watched transactions (starting a job, queueing a cron job); redis-py would raise
    WatchError there, which arq only expects from EXEC, and the worker would exit. EXEC
    itself still fails with WatchError after a lost connection, which arq handles."""

    _watched: tuple[Any, ...] = ()
    _rewatch = False

    async def watch(self, *names: Any) -> Any:  # type: ignore[override]
        self._watched += names
        return await super().watch(*names)

    async def reset(self) -> None:
        self._watched, self._rewatch = (), False
        await super().reset()  # type: ignore[no-untyped-call]

    async def _disconnect_reset_raise(self, conn: Any, error: Exception) -> None:
        if self.watching and isinstance(error, UNREACHABLE):
            await conn.disconnect()
            self._rewatch = True  # RideOut runs the command again once Redis answers
            return
        await super()._disconnect_reset_raise(conn, error)  # type: ignore[no-untyped-call]

    async def _send_command_parse_response(
        self, conn: Any, command_name: Any, *args: Any, **options: Any
    ) -> Any:
        if self._rewatch:
            await conn.send_command("WATCH", *self._watched)
            await self.parse_response(conn, "WATCH")
            self._rewatch = False
        return await super()._send_command_parse_response(  # type: ignore[no-untyped-call]
            conn, command_name, *args, **options
        )


class _RidingArqRedis(ArqRedis):
    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Any:
        return _RidingPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )

    async def zrangebyscore(self, name: Any, *args: Any, **kwargs: Any) -> Any:
        """As redis-py's; read from the queue, the ids arq cannot decode (it would exit on
        them) are moved from the queue to the dead-letter stream instead of returned."""
        found: list[bytes] = await super().zrangebyscore(name, *args, **kwargs)
        if name != keys.QUEUE_NAME:
            return found
        undecodable = [job_id for job_id in found if not _utf8(job_id)]
        if undecodable:
            await set_aside(self, undecodable)
        return [job_id for job_id in found if job_id not in undecodable]


def _utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


async def set_aside(redis: ArqRedis, job_ids: list[bytes]) -> None:
    """Move queue entries whose id is not UTF-8 to the dead-letter stream, with their job."""
    for raw_id in job_ids:
        job_key = keys.ARQ_JOB_PREFIX.encode() + raw_id
        body = await redis.get(job_key)
        await dead_letters.add(
            redis,
            kind="malformed_job",
            reason="the queue entry's job id is not UTF-8: no worker can run it "
            "(job ids are text: dispatch:<event_id>)",
            job_id=raw_id.decode(errors="replace"),
            payload=(body or b"").decode(errors="replace")[:MAX_RAW_KEPT_CHARS],
        )
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.QUEUE_NAME, raw_id)
            pipe.delete(job_key)
            await pipe.execute()
        metrics.REJECTED_JOBS.inc()
        log.warning("queue entry with an undecodable job id set aside", size_bytes=len(raw_id))


def worker_redis_settings(url: str, outage: Outage = OUTAGE) -> RedisSettings:
    """arq's connection settings for `url`, riding out outages (what `arq --check` reads)."""
    return dataclasses.replace(
        redis_settings(url),
        retry=RideOut(outage),
        retry_on_error=list(UNREACHABLE),  # type: ignore[arg-type]
    )


def worker_pool(url: str, outage: Outage = OUTAGE) -> ArqRedis:
    """The pool arq's worker polls with (its `redis_pool`): as arq's own `create_pool` makes
    it from `worker_redis_settings`, riding out outages (told to `outage`), with JSON jobs.
    Made without connecting, so that a worker started while Redis is away waits for it."""
    settings = worker_redis_settings(url, outage)
    return _RidingArqRedis(
        host=settings.host,
        port=settings.port,
        unix_socket_path=settings.unix_socket_path,
        socket_connect_timeout=settings.conn_timeout,
        ssl=settings.ssl,
        ssl_keyfile=settings.ssl_keyfile,
        ssl_certfile=settings.ssl_certfile,
        ssl_cert_reqs=settings.ssl_cert_reqs,
        ssl_ca_certs=settings.ssl_ca_certs,
        ssl_check_hostname=settings.ssl_check_hostname,
        retry=settings.retry,
        retry_on_error=settings.retry_on_error,
        db=settings.database,
        username=settings.username,
        password=settings.password,
        encoding="utf8",
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=keys.QUEUE_NAME,
    )


async def create_jobs_redis(url: str) -> ArqRedis:
    """A pool for the jobs' own commands (JSON jobs), which fails within a second or two when
    Redis is away."""
    settings = dataclasses.replace(
        redis_settings(url),
        retry=Retry(copy.deepcopy(RECONNECT_BACKOFF), JOB_RETRIES, UNREACHABLE),  # type: ignore[arg-type]
        retry_on_error=list(UNREACHABLE),  # type: ignore[arg-type]
    )
    return await create_pool(settings, job_serializer=serialize, job_deserializer=deserialize)


async def record_outage(redis: ArqRedis, started: float, ended: float) -> None:
    """Note an outage that just ended where doctor and reconciliation read it (best effort:
    Redis may be away again)."""
    try:
        await redis.hset(  # type: ignore[misc]
            keys.REDIS_OUTAGE,
            mapping={"started_ms": int(started * 1000), "ended_ms": int(ended * 1000)},
        )
    except RedisError:
        pass
    except UNREACHABLE:
        pass
