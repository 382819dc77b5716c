"""Rejected input: recorded on the dead-letter stream with a reason a person can act on, so
nothing is lost and the worker goes on. `reject_malformed_job` is where a job that is not
valid JSON of the job shape ends up (the JSON deserializer routes it here)."""

from __future__ import annotations

from typing import Any

import structlog

from orchestrator import metrics
from orchestrator.jobs.context import of
from orchestrator.store import dead_letters

log = structlog.get_logger("orchestrator.jobs.rejections")


async def reject(
    ctx: dict[str, Any], *, kind: str, reason: str, payload: Any, event_id: str = ""
) -> dict[str, Any]:
    """Record a job whose input is invalid (`kind`: invalid_event, invalid_report) as a dead
    letter; the job's result says why."""
    c = of(ctx)
    metrics.REJECTED_JOBS.inc()
    entry = await dead_letters.add(
        c.redis,
        kind=kind,
        reason=reason,
        job_id=ctx["job_id"],
        payload=payload,
        event_id=event_id,
    )
    log.warning("input rejected", kind=kind, reason=reason, job_id=ctx["job_id"], dead_letter=entry)
    return {"outcome": "rejected", "reason": reason, "dead_letter": entry}


async def reject_malformed_job(
    ctx: dict[str, Any], *, reason: str, raw: str, raw_bytes: int
) -> dict[str, Any]:
    c = of(ctx)
    metrics.REJECTED_JOBS.inc()
    entry = await dead_letters.add(
        c.redis, kind="malformed_job", reason=reason, job_id=ctx["job_id"], payload=raw
    )
    log.warning("malformed job rejected", job_id=ctx["job_id"], reason=reason, size_bytes=raw_bytes)
    return {"outcome": "rejected", "reason": reason, "dead_letter": entry}
