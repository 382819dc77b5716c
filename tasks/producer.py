"""Producer helpers: the one typed way to put work on the queue.

Each writes the documented JSON job (`tasks.serialization`) itself, with one Lua script
(`ENQUEUE_SCRIPT`), whatever Redis client it is given: an arq pool from `tasks.create_redis`,
one from arq's own `create_pool` (whose serializer is pickle: arq's `enqueue_job` would write a
job no worker reads), or a plain `redis.asyncio.Redis`. An error from Redis never carries the
job (its metadata may hold personal data): only what Redis answered.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

from arq.jobs import Job
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tasks.keys import (
    ARQ_JOB_PREFIX,
    ARQ_RESULT_PREFIX,
    DISPATCH_AGENT,
    END_SESSION,
    QUEUE_NAME,
    SESSION_REPORT,
    dispatch_job_id,
    report_job_id,
)
from tasks.models import DispatchRequest, EndSessionRequest, SessionReport
from tasks.redaction import redis_error_text
from tasks.serialization import deserialize, job_body

JOB_EXPIRES_EXTRA_MS = 86_400_000
"""A job not started this long after it was due expires (arq's default)."""

ENQUEUE_SCRIPT = """\
-- Queue an arq job, unless a job or a result of its id exists: the same event twice is one job.
-- KEYS: arq:job:<id>, arq:result:<id>, arq:queue
-- ARGV: the job's JSON, when it is due (unix ms), its expiry (ms from now), the job id
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[4])
return 1
"""
"""How every producer queues a job, in one step on any connection (README: "From other
languages" gives it to producers in other languages, as is)."""


async def enqueue_job(
    redis: Redis,
    function: str,
    *args: Any,
    job_id: str,
    due: datetime | None = None,
    **kwargs: Any,
) -> Job:
    """Queue `function(*args, **kwargs)` as job `job_id`, due at `due` (now when absent or
    past), unless a job or a result of that id exists: the same id twice is one job. A Redis
    error is raised with Redis's answer only, never the job."""
    now_ms = int(time.time() * 1000)
    due_ms = max(now_ms, int(due.timestamp() * 1000)) if due is not None else now_ms
    body = job_body(function, list(args), kwargs=kwargs, enqueue_ms=now_ms)
    keys = [ARQ_JOB_PREFIX + job_id, ARQ_RESULT_PREFIX + job_id, QUEUE_NAME]
    expiry_ms = due_ms - now_ms + JOB_EXPIRES_EXTRA_MS
    try:
        await redis.eval(  # type: ignore[misc]  # redis-py types it as sync too
            ENQUEUE_SCRIPT, len(keys), *keys, body.decode(), str(due_ms), str(expiry_ms), job_id
        )
    except RedisError as exc:
        raise type(exc)(redis_error_text(exc)) from None
    return Job(job_id, redis, _queue_name=QUEUE_NAME, _deserializer=deserialize)


def _defaults_left_out(request: DispatchRequest) -> set[str]:
    """Fields newer than the job format's first version, left out at their default so that a
    job reads as it always did."""
    left_out = set()
    if request.priority == 0:
        left_out.add("priority")
    if request.restart_policy == "on_failure":
        left_out.add("restart_policy")
    return left_out


async def enqueue_dispatch(redis: Redis, request: DispatchRequest) -> Job:
    """Enqueue an event's dispatch. Idempotent on `event_id`: enqueuing the same event again
    returns the same job and queues nothing more. A `not_before` in the past means now."""
    return await enqueue_job(
        redis,
        DISPATCH_AGENT,
        request.model_dump(mode="json", exclude_none=True, exclude=_defaults_left_out(request)),
        job_id=dispatch_job_id(request.event_id),
        due=request.not_before,
    )


async def enqueue_end_session(redis: Redis, request: EndSessionRequest) -> Job:
    return await enqueue_job(
        redis,
        END_SESSION,
        request.model_dump(mode="json"),
        job_id=f"end_session:{uuid.uuid4().hex}",
    )


async def enqueue_session_report(
    redis: Redis, report: SessionReport, *, nonce: str | None = None
) -> Job:
    """Hand a session's report to the orchestrator; the agent calls this once per session.

    Retries of one write pass the same `nonce`, so an attempt whose outcome was unknown cannot
    enqueue the report twice; a different nonce is a different report (filed as a duplicate).
    """
    job_id = report_job_id(report.session_id, nonce or uuid.uuid4().hex[:12])
    return await enqueue_job(redis, SESSION_REPORT, report.model_dump(mode="json"), job_id=job_id)
