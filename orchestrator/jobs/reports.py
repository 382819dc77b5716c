"""A session's one report: the agent's (`session_report`), and those the orchestrator writes
itself (a failed dispatch, a lost agent, a session ended before any agent took it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError

from orchestrator import metrics
from orchestrator.errors import describe_validation
from orchestrator.jobs.context import Context, of
from orchestrator.jobs.rejections import reject
from orchestrator.store import dead_letters
from orchestrator.store.record import Session
from orchestrator.store.sessions import Filing
from tasks import keys
from tasks.models import ReportStatus, SessionReport

log = structlog.get_logger("orchestrator.jobs.reports")


def _ms_to_dt(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value / 1000, UTC) if value else None


async def file_report(c: Context, report: SessionReport) -> Filing:
    """File a terminal report exactly once; an agent's second report for the session is kept
    aside."""
    filing = await c.store.file_report(report)
    if filing == "same":
        log.info("session report filed already (its job ran again)", session_id=report.session_id)
        return filing
    if filing == "filed":
        metrics.REPORTS.labels(report.status).inc()
        log.info(
            "session report filed",
            session_id=report.session_id,
            room=report.room,
            status=report.status,
            source=report.source,
            end_reason=report.end_reason,
        )
        return filing
    if report.source == "orchestrator":
        # A report of our own for a session that has its report (two signals of one death,
        # or the agent's came first): nothing to keep; a duplicate is an agent's second word.
        log.info("session has its report already", session_id=report.session_id)
        return filing
    metrics.DUPLICATE_REPORTS.inc()
    await c.redis.xadd(
        keys.DUPLICATE_REPORTS_STREAM,
        {
            "session_id": report.session_id,
            "status": report.status,
            "source": report.source,
            "report": report.model_dump_json(),
        },
        maxlen=keys.RESULTS_STREAM_MAXLEN,
        approximate=True,
    )
    log.warning("duplicate report ignored", session_id=report.session_id, source=report.source)
    return filing


async def synthesize_report(
    c: Context, session: Session, *, status: ReportStatus, reason: str, end_reason: str
) -> bool:
    """File a report on the agent's behalf, from what the session record knows."""
    report = synthesized(session, status=status, reason=reason, end_reason=end_reason)
    return await file_report(c, report) == "filed"


def synthesized(
    session: Session,
    *,
    status: ReportStatus,
    reason: str,
    end_reason: str,
    replaced_by: str | None = None,
    outputs: dict[str, Any] | None = None,
) -> SessionReport:
    """The report the orchestrator writes for a session, from what its record knows."""
    started = _ms_to_dt(session.assigned_at or session.dispatched_at)
    ended = datetime.now(UTC)
    return SessionReport(
        session_id=session.session_id,
        event_id=session.event_id,
        room=session.room,
        status=status,
        agent_name=session.agent_name or None,
        dispatch_id=session.dispatch_id,
        job_id=session.job_id,
        worker_id=session.worker_id,
        started_at=started,
        ended_at=ended,
        duration_s=(ended - started).total_seconds() if started else None,
        end_reason=end_reason,
        error=reason if status != "completed" else None,
        source="orchestrator",
        replaces=session.replaces,
        replaced_by=replaced_by,
        part_of=session.part_of,
        publisher=session.publisher,
        outputs=outputs or {},
    )


async def fail_session(
    c: Context,
    session: Session,
    *,
    reason: str,
    event: dict[str, Any],
    job_id: str,
    end_reason: str = "dispatch_failed",
) -> None:
    """A dispatch that will not happen: failed report (which frees the room), and a dead letter
    that replays `event` (the job `job_id` gave up)."""
    session = await c.store.get(session.session_id) or session  # what it holds by now
    await synthesize_report(c, session, status="failed", reason=reason, end_reason=end_reason)
    await c.store.record_event(session.event_id, "failed", overwrite=True)
    entry = await dead_letters.add(
        c.redis,
        kind="failed_dispatch",
        reason=reason,
        job_id=job_id,
        payload=event,
        event_id=session.event_id,
        session_id=session.session_id,
        generation=session.generation,
    )
    metrics.DISPATCH_OUTCOMES.labels("failed").inc()
    log.error("dispatch failed", session_id=session.session_id, reason=reason, dead_letter=entry)


async def session_report(ctx: dict[str, Any], report: Any) -> dict[str, Any]:
    """The agent's report: file it on the results stream, end the session, free the room."""
    c = of(ctx)
    try:
        parsed = SessionReport.model_validate(report)
    except ValidationError as exc:
        reason = describe_validation(exc, "session report")
        return await reject(ctx, kind="invalid_report", reason=reason, payload=report)
    filing = await file_report(c, parsed)
    outcome = "duplicate" if filing == "other" else "filed"
    return {"outcome": outcome, "session_id": parsed.session_id}
