"""Reading the agent's enqueued session reports straight from Redis (the arq job JSON)."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from tasks.keys import ARQ_JOB_PREFIX, SESSION_REPORT, report_job_id
from tasks.models import SessionReport
from tests.support.waiting import eventually


async def reports_for(redis: Redis, session_id: str) -> list[SessionReport]:
    """Every session_report job enqueued for `session_id`."""
    reports = []
    async for key in redis.scan_iter(match=ARQ_JOB_PREFIX + report_job_id(session_id, "*")):
        raw = await redis.get(key)
        if raw is None:
            continue
        job = json.loads(raw)
        assert job["f"] == SESSION_REPORT
        reports.append(SessionReport.model_validate(job["a"][0]))
    return reports


async def wait_for_report(redis: Redis, session_id: str, timeout_s: float = 30.0) -> SessionReport:
    async def first() -> SessionReport | None:
        found = await reports_for(redis, session_id)
        return found[0] if found else None

    report: SessionReport = await eventually(
        first, timeout_s=timeout_s, what=f"the session report of {session_id}"
    )
    return report
