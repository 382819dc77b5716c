"""Reconciliation (arq cron): every session ends with exactly one report, whatever became of
the jobs that were to end it, and no room stays claimed by a finished session.

What it decides, for each live session that is due:
- `waiting` in its agent name's line past its event's `expires_at`: it ends (`expired`).
- `claimed` long after its claim, with its dispatch job gone: the dispatch it made is adopted,
  or the session fails (dead letter) and its room is free.
- a session of agents that take a job per publisher ends with its room (jobs/publishers.py);
  each of its parts is looked at as any session.
- `dispatched` past the time its assignment check should have run, with no check queued or
  running: a new check is queued (a check that failed keeps its job id for an hour, so the
  same id would be refused).
- An agent is `lost` only when it is gone by what LiveKit and our agent report, never on a
  start that is merely slow:
  - while one of our agent workers holds the session (starting or running, by its record,
    `tasks.heartbeat.WorkerRecord`), it is alive;
  - otherwise, if the session sent heartbeats, the last is older than the grace period;
  - or the agent took the job and never started the session within the grace period;
  - or LiveKit saw it go (webhook: room closed, agent left) that long ago;
  - for agents that send no heartbeats, its dispatch vanished from LiveKit.
  A session no agent ever took is never `lost`: the assignment check fails it (dead letter)
  or, when it was ended by request, it is closed as ended before an agent joined.
- Silence is measured from when heartbeats could be written again: after the last Redis
  outage or restart, not across it.

A dead agent's session goes to `failover.agent_died`: replaced where people are still in the
room, else `lost` with a synthesized report.

A pass looks only at the sessions that are due (`keys.RECONCILE_DUE`): each visit schedules
the next one for when a rule could next apply, and no later than
`Settings.session_check_every_s`. Room claims are swept for orphans (left by a crash between
steps) a bounded slice of the keyspace per pass: housekeeping only, since the claim script
already takes over a claim whose session has ended. What a pass reads, it reads in pages, each
one script; only sessions that need something done cost a call of their own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog

from orchestrator.errors import LiveKitError
from orchestrator.jobs import publishers
from orchestrator.jobs.context import Context, of
from orchestrator.jobs.failover import agent_died
from orchestrator.jobs.fleet import quiet_since
from orchestrator.jobs.line import expire
from orchestrator.jobs.reports import fail_session, synthesize_report
from orchestrator.store import queries
from orchestrator.store.connections import UNREACHABLE
from orchestrator.store.line import line_names
from orchestrator.store.record import Session, SessionStatus
from orchestrator.store.sessions import Lease, now_ms
from tasks import heartbeat, keys
from tasks.connection import text
from tasks.producer import enqueue_job

log = structlog.get_logger("orchestrator.jobs.reconcile")


PAGE = 200
SCAN_COUNT = 500
# Of the whole keyspace, where SCAN finds the room claims: a pass over 20,000 cost a busy worker
# ~40 ms of CPU every 10 s; at 5,000 a million keys are swept in under an hour.
SWEEP_KEYS_PER_PASS = 5_000


@dataclass(frozen=True)
class Evidence:
    """What one pass knows besides each session's record and heartbeat."""

    now: int
    quiet_since: int
    """No heartbeat could be written before this (unix ms): the end of the last Redis outage
    or restart. Silence is measured from here at the earliest."""
    held: dict[str, heartbeat.SessionHold]
    """Sessions a live agent worker of ours holds, and how."""


async def reconcile_sessions(ctx: dict[str, Any]) -> dict[str, int]:
    c = of(ctx)
    started = time.perf_counter()
    counts = {
        "checked": 0,
        "lost": 0,
        "replaced": 0,
        "adopted": 0,
        "failed": 0,
        "closed": 0,
        "expired": 0,
        "claims_freed": 0,
        "let_out": 0,
    }
    try:
        evidence = await _evidence(c)
        due = await c.store.due_sessions(evidence.now)
        for page in (due[i : i + PAGE] for i in range(0, len(due), PAGE)):
            await _reconcile_page(ctx, c, evidence, page, counts)
        counts["claims_freed"] = await free_orphan_claims(c)
        for agent_name in await line_names(c.redis):
            # A backstop: every step that frees a slot moves the line itself.
            counts["let_out"] += await c.store.move_line(agent_name, sweep=True)
        await queries.trim_recent_sessions(c.redis, c.settings.session_retention_s)
    except UNREACHABLE as exc:
        log.warning("reconciliation stopped: Redis unreachable", error=type(exc).__name__)
        return counts
    log.info("reconciliation", duration_s=round(time.perf_counter() - started, 3), **counts)
    return counts


async def _evidence(c: Context) -> Evidence:
    now = now_ms()
    quiet = await quiet_since(c)
    since = now - int(c.settings.agent_worker_timeout_s * 1000)
    held: dict[str, heartbeat.SessionHold] = {}
    for record in await heartbeat.worker_records(c.redis, since):
        for session_id, hold in record.sessions.items():
            if held.get(session_id) != "running":
                held[session_id] = hold
    return Evidence(now=now, quiet_since=quiet, held=held)


async def _reconcile_page(
    ctx: dict[str, Any], c: Context, evidence: Evidence, page: list[str], counts: dict[str, int]
) -> None:
    next_checks: dict[str, int] = {}
    for session_id, (session, last_beat) in zip(page, await _read_sessions(c, page), strict=True):
        counts["checked"] += 1
        try:
            outcome = await _reconcile_one(ctx, c, evidence, session_id, session, last_beat)
        except LiveKitError as exc:
            log.warning(
                "reconciliation deferred: LiveKit error", session_id=session_id, error=str(exc)
            )
            continue  # still due: the next pass tries again
        if outcome:
            counts[outcome] += 1
        if session is not None and outcome in (None, "adopted"):
            next_checks[session_id] = next_check_ms(c, evidence, session, last_beat)
    await c.store.schedule_checks(next_checks)


async def _read_sessions(
    c: Context, session_ids: list[str]
) -> list[tuple[Session | None, int | None]]:
    """Each session's record (None when gone) and its agent's last heartbeat, in one trip."""
    return [
        (session, heartbeat.beat_ms(beat)) for session, beat in await c.store.read_live(session_ids)
    ]


def _agent_took_job(session: Session, last_beat: int | None) -> bool:
    return (
        last_beat is not None
        or session.status == SessionStatus.ASSIGNED
        or bool(session.job_id or session.assigned_at)
    )


async def _reconcile_one(
    ctx: dict[str, Any],
    c: Context,
    evidence: Evidence,
    session_id: str,
    session: Session | None,
    last_beat: int | None,
) -> str | None:
    if session is None or session.terminal:
        await c.store.forget(session_id)
        return None
    status, now = session.status, evidence.now
    grace_ms = c.settings.report_grace_s * 1000

    def silent_for(since_ms: int) -> int:
        """How long nothing was heard since `since_ms`, not counting a Redis outage."""
        return now - max(since_ms, evidence.quiet_since)

    if status == SessionStatus.WAITING:
        if session.expires_at and now >= session.expires_at:
            await expire(c, session)
            return "expired"
        return None
    if status == SessionStatus.CLAIMED:
        return await _stale_claim(ctx, c, session, now)
    if status == SessionStatus.DISPATCHED:
        await _ensure_confirmation(c, session, now)
    if publishers.of_publishers(session):
        why = await publishers.ended(c, session)
        return "closed" if why and await publishers.close(c, session, why) else None
    if session_id in evidence.held:
        return None  # a live agent worker of ours holds it, starting or running
    took = _agent_took_job(session, last_beat)

    if last_beat is not None:
        silent_ms = silent_for(last_beat)
        if silent_ms <= grace_ms:
            return None
        return await agent_died(
            c,
            session,
            f"agent stopped sending heartbeats {round(silent_ms / 1000)} s ago, sent no report, "
            "and no agent worker holds its session: its job process died without running its "
            "shutdown code (killed, out of memory?) or its worker is gone",
        )

    gone_since = session.gone_since
    if took and gone_since and silent_for(gone_since) > grace_ms:
        return await agent_died(
            c,
            session,
            f"LiveKit saw the agent go (room closed, dispatch deleted or agent left) "
            f"{round((now - gone_since) / 1000)} s ago and no report arrived within "
            f"{c.settings.report_grace_s:g} s",
        )

    assigned_at = session.assigned_at
    if c.settings.agent_heartbeats and assigned_at and silent_for(assigned_at) > grace_ms:
        return await agent_died(
            c,
            session,
            f"the agent took the job {round((now - assigned_at) / 1000)} s ago but never "
            "started its session, and no agent worker holds it: its job process died at "
            "start-up, or its worker is gone",
        )

    if status == SessionStatus.ENDING and not took:
        requested = session.end_requested_at or session.claimed_at or 0
        if silent_for(requested) > grace_ms:
            # end_session stopped before closing a session no agent had taken.
            reason = session.end_reason or "ended by request"
            await synthesize_report(
                c,
                session,
                status="completed",
                reason="",
                end_reason=f"ended before an agent joined: {reason}",
            )
            return "closed"
        return None

    # An agent that sends no heartbeats (not ours): its dispatch vanishing from LiveKit is
    # the only sign it is gone.
    started = session.dispatched_at or session.claimed_at or now
    if (
        not took
        or gone_since
        or now - started <= c.settings.assignment_check_delay_s * 1000 + grace_ms
    ):
        return None
    if await c.livekit.session_dispatch(session.room, session_id) is None:
        await c.store.transition(session_id, (status,), gone_since=now)
    return None


def next_check_ms(c: Context, evidence: Evidence, session: Session, last_beat: int | None) -> int:
    """When reconciliation should next look at a live session (unix ms): the earliest time
    a rule of `_reconcile_one` could apply to what it is now, at the latest
    `session_check_every_s` from now."""
    s = c.settings
    now = evidence.now
    grace_ms = int(s.report_grace_s * 1000)
    status = session.status
    times = [now + max(1, int(s.session_check_every_s * 1000))]

    def after_grace(since_ms: int) -> int:
        return max(since_ms, evidence.quiet_since) + grace_ms

    if status == SessionStatus.WAITING:
        if session.expires_at:
            times.append(session.expires_at)
    elif status == SessionStatus.CLAIMED:
        times.append(_claimed_since(session) + int(s.claim_stale_s * 1000))
    else:
        if status == SessionStatus.DISPATCHED:
            times.append(_confirmation_due(c, session, now))
        if session.gone_since:
            times.append(after_grace(session.gone_since))
        if last_beat is not None:
            times.append(after_grace(last_beat))
        if s.agent_heartbeats and session.assigned_at:
            times.append(after_grace(session.assigned_at))
        if status == SessionStatus.ENDING:
            times.append(after_grace(session.end_requested_at or 0))
        started = session.dispatched_at or session.claimed_at or now
        times.append(started + int(s.assignment_check_delay_s * 1000) + grace_ms)
    return min(t for t in times if t > now)


def _confirmation_due(c: Context, session: Session, now: int) -> int:
    """When a dispatch's assignment check is overdue (its confirm job lost in a crash)."""
    attempts = max(1, session.attempts)
    return (session.dispatched_at or now) + int(
        (c.settings.assignment_check_delay_s * 2**attempts + c.settings.report_grace_s) * 1000
    )


async def _ensure_confirmation(c: Context, session: Session, now: int) -> None:
    """A dispatch whose assignment check is overdue and neither queued nor running (its job
    was lost, or failed for good) gets a new check, under a new job id."""
    if now < _confirmation_due(c, session, now):
        return
    session_id, dispatch_id = session.session_id, session.dispatch_id or ""
    pending = session.confirm_job or keys.confirm_job_id(session_id, dispatch_id)
    if await c.redis.exists(keys.ARQ_JOB_PREFIX + pending):
        return  # queued or running: it will come
    job_id = f"{keys.confirm_job_id(session_id, dispatch_id)}:w{now}"
    attempts = max(1, session.attempts)
    if await c.store.transition(
        session_id, (SessionStatus.DISPATCHED,), having_dispatch=dispatch_id, confirm_job=job_id
    ):
        await enqueue_job(
            c.redis, keys.CONFIRM_ASSIGNMENT, session_id, dispatch_id, attempts, job_id=job_id
        )
        log.warning("assignment check overdue: queued it again", session_id=session_id)


def _claimed_since(session: Session) -> int:
    """When the session took its slot and began to be dispatched: let out of its line, or
    claimed."""
    return session.admitted_at or session.claimed_at or 0


async def _stale_claim(ctx: dict[str, Any], c: Context, session: Session, now: int) -> str | None:
    """A session still `claimed` long after its claim: its dispatch job died for good (arq
    gave up on it). Adopt a dispatch it made, or fail it so the room is free again."""
    if now - (_claimed_since(session) or now) <= c.settings.claim_stale_s * 1000:
        return None
    session_id, event_id = session.session_id, session.event_id
    dispatch_job = session.dispatch_job or keys.dispatch_job_id(event_id)
    if await c.redis.exists(keys.ARQ_JOB_PREFIX + dispatch_job):
        return None  # arq still holds the job and will run it again
    lease = Lease(token=f"reconcile#{now}", ttl_ms=int((c.settings.job_timeout_s + 2) * 1000))
    answer, _ = await c.store.take_lease(session_id, lease, status=SessionStatus.CLAIMED)
    if answer != "ok":
        return None  # a run of the dispatch job is at it after all
    async with c.store.holding(session_id, lease):
        dispatch = await c.livekit.session_dispatch(session.room, session_id)
        if dispatch is not None:
            payload = await c.redis.get(keys.session_payload_key(session_id))
            await c.store.mark_dispatched(
                session_id,
                event_id,
                dispatch.id,
                text(payload) if payload else dispatch.metadata,
                check_in_s=c.settings.assignment_check_delay_s,
                attempt=1,
                lease=lease,
            )
            return "adopted"
    await fail_session(
        c,
        session,
        reason=f"the dispatch job for this event stopped after claiming the room and never "
        f"dispatched (last error: {session.last_error or 'none recorded'})",
        event={"event_id": event_id, "room": session.room},
        job_id=str(ctx.get("job_id", "reconcile")),
    )
    return "failed"


async def free_orphan_claims(c: Context) -> int:
    """Delete room claims whose session is terminal or gone (a crash between steps).

    Each pass goes on where the last stopped and covers about SWEEP_KEYS_PER_PASS keys of the
    database: all of a small one, a big one over several passes."""
    freed = 0
    cursor = int(await c.redis.get(keys.CLAIM_SWEEP_CURSOR) or 0)
    for _ in range(max(1, SWEEP_KEYS_PER_PASS // SCAN_COUNT)):
        cursor, claim_keys = await c.redis.scan(
            cursor, match=keys.room_claim_key("*"), count=SCAN_COUNT
        )
        freed += await c.store.free_orphan_claims([text(k) for k in claim_keys])
        if cursor == 0:
            break
    await c.redis.set(keys.CLAIM_SWEEP_CURSOR, cursor)
    return freed
