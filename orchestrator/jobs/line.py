"""The waiting line's jobs. A session that found no free slot of its agent name waits in the
line (`dispatch_agent`), holding its room. The step that frees a slot (a report filed, a
session sent back by its assignment check) or grows the fleet (`move_line`, queued by an
agent worker that joined or grew) lets the head out at once: it takes the slot and its
`dispatch_from_line` job is queued in the same script (store.lua.LUA_LINE).

A waiting session leaves the line otherwise only by ending: `expires_at` passed (the caller
hung up; reconciliation looks at it then) or `end_session`.
"""

from __future__ import annotations

from typing import Any

import structlog

from orchestrator import metrics
from orchestrator.jobs.context import Context, of
from orchestrator.jobs.dispatch import dispatch_claimed, result, target_of
from orchestrator.jobs.rejections import reject
from orchestrator.jobs.reports import synthesize_report
from orchestrator.jobs.retries import job_lease, wait_for_lease
from orchestrator.store.record import Session, SessionStatus
from orchestrator.store.sessions import now_ms
from tasks.models import check_agent_name

log = structlog.get_logger("orchestrator.jobs.line")

LINE_CHECK_DELAY_S = 1.0
"""How soon the dispatch of a session let out of the line is checked. A slot is passed on
the moment a report is filed, while the agent's job process may still be winding down: a
worker that still counts it declines, LiveKit drops the dispatch, and the check sends the
session back to the head of the line, to go again at once; soon, so that the caller waits
a second for that rather than LKD_ASSIGNMENT_CHECK_DELAY_S."""


async def dispatch_from_line(ctx: dict[str, Any], session_id: str) -> dict[str, Any]:
    """Dispatch a session queued for it by a script: let out of its line (it holds its slot),
    unless it expired; or one that replaces a session whose agent died (failover.py)."""
    c = of(ctx)
    session = await c.store.get(session_id)
    if (
        session is None
        or session.status != SessionStatus.CLAIMED
        or session.dispatch_job != ctx["job_id"]
    ):
        return result("withdrawn", reason="the session is no longer waiting for this job")
    structlog.contextvars.bind_contextvars(
        event_id=session.event_id, session_id=session_id, room=session.room, job_try=ctx["job_try"]
    )
    try:
        lease = job_lease(ctx)
        while True:
            answer, busy_ms = await c.store.take_lease(
                session_id, lease, status=SessionStatus.CLAIMED
            )
            if answer == "moved":
                return result("withdrawn", reason="the session moved on")
            if answer == "ok":
                break
            await wait_for_lease(ctx, busy_ms)  # another run of this job is at it
        async with c.store.holding(session_id, lease):
            if session.expires_at and now_ms() >= session.expires_at:
                await c.store.release_lease(session_id, lease)
                return await expire(c, session)
            target = await target_of(c, session)
            outcome = await dispatch_claimed(
                ctx,
                c,
                target,
                lease,
                adopt=ctx["job_try"] > 1,
                queued_at=None,
                check_in_s=min(c.settings.assignment_check_delay_s, LINE_CHECK_DELAY_S),
            )
        if outcome["outcome"] == "dispatched":
            waited_s = (now_ms() - (session.claimed_at or now_ms())) / 1000
            took = metrics.RESTART_SECONDS if session.replaces else metrics.WAIT_SECONDS
            took.observe(max(0.0, waited_s))
        return outcome
    finally:
        structlog.contextvars.clear_contextvars()


async def expire(c: Context, session: Session) -> dict[str, Any]:
    """A session whose event expired before a slot freed: `failed` (end reason `expired`),
    never dispatched; its event's outcome is `expired`."""
    waited_s = round((now_ms() - (session.claimed_at or now_ms())) / 1000, 1)
    reason = (
        f"the event expired (expires_at) after {waited_s} s waiting for a free "
        f"{session.agent_name!r} agent: every slot of that agent name stayed in use"
    )
    filed = await synthesize_report(
        c, session, status="failed", reason=reason, end_reason="expired"
    )
    await c.store.record_event(session.event_id, "expired", overwrite=True)
    if filed:
        metrics.DISPATCH_OUTCOMES.labels("expired").inc()
        log.info("waiting session expired", session_id=session.session_id, waited_s=waited_s)
    return result("expired", session_id=session.session_id)


async def move_line(ctx: dict[str, Any], agent_name: Any) -> dict[str, Any]:
    """An agent worker joined or grew: let out as many waiting sessions as slots are free."""
    c = of(ctx)
    try:
        name = check_agent_name(agent_name) if isinstance(agent_name, str) else None
    except ValueError:
        name = None
    if name is None:
        reason = "invalid move_line job: its argument must be an agent name (a string)"
        return await reject(ctx, kind="invalid_job", reason=reason, payload=agent_name)
    let_out = await c.store.move_line(name)
    if let_out:
        log.info("line moved", agent_name=name, let_out=let_out)
    return {"outcome": "moved", "let_out": let_out}
