"""Producer helpers: the one typed way to put work on the queue."""

from __future__ import annotations

import uuid

from arq import ArqRedis
from arq.jobs import Job

from tasks.keys import (
    DISPATCH_AGENT,
    END_SESSION,
    QUEUE_NAME,
    SESSION_REPORT,
    dispatch_job_id,
    report_job_id,
)
from tasks.models import DispatchRequest, EndSessionRequest, SessionReport


async def enqueue_dispatch(redis: ArqRedis, request: DispatchRequest) -> Job:
    """Enqueue an event's dispatch. Idempotent on `event_id`: enqueuing the same event again
    returns the same job and queues nothing more."""
    job_id = dispatch_job_id(request.event_id)
    await redis.enqueue_job(
        DISPATCH_AGENT,
        request.model_dump(mode="json", exclude_none=True),
        _job_id=job_id,
        _queue_name=QUEUE_NAME,
        _defer_until=request.not_before,
    )
    return Job(job_id, redis, _queue_name=QUEUE_NAME, _deserializer=redis.job_deserializer)


async def enqueue_end_session(redis: ArqRedis, request: EndSessionRequest) -> Job:
    job_id = f"end_session:{uuid.uuid4().hex}"
    await redis.enqueue_job(
        END_SESSION, request.model_dump(mode="json"), _job_id=job_id, _queue_name=QUEUE_NAME
    )
    return Job(job_id, redis, _queue_name=QUEUE_NAME, _deserializer=redis.job_deserializer)


async def enqueue_session_report(
    redis: ArqRedis, report: SessionReport, *, nonce: str | None = None
) -> Job:
    """Hand a session's report to the orchestrator; the agent calls this once per session.

    Retries of one write pass the same `nonce`, so an attempt whose outcome was unknown cannot
    enqueue the report twice; a different nonce is a different report (filed as a duplicate).
    """
    job_id = report_job_id(report.session_id, nonce or uuid.uuid4().hex[:12])
    await redis.enqueue_job(
        SESSION_REPORT, report.model_dump(mode="json"), _job_id=job_id, _queue_name=QUEUE_NAME
    )
    return Job(job_id, redis, _queue_name=QUEUE_NAME, _deserializer=redis.job_deserializer)
