"""Reconciliation (arq cron): every session ends with exactly one report, even when its agent
died without running its shutdown code, and no room stays claimed by a finished session.

A live session's agent is taken for gone when
- it sent heartbeats and the last one is older than the grace period (its process was killed), or
- it never sent one and its dispatch is gone from LiveKit (room closed, dispatch deleted) for
  longer than the grace period.
Such a session gets a synthesized `lost` report; any dispatch it still has is deleted, so a
zombie agent cannot share the room with the next session.

A pass looks only at the sessions that are due (`keys.RECONCILE_DUE`): each visit schedules
the next one for when a rule could next apply (a heartbeat going stale, a claim growing old),
and no later than `Settings.session_check_every_s`, since nothing detected after a visit can
fire sooner. Room claims are swept for orphans (left by a crash between steps) a bounded slice
of the keyspace per pass: housekeeping only, since the claim script already takes over a claim
whose session has ended, so an orphan never keeps a room from its next dispatch. What
a pass reads, it reads in pages, each one script (sessions with their heartbeats; room claims
checked against their holders' status and freed in Redis); only sessions that need something
done cost a call of their own. Pages are small, so dispatches go on between them.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from orchestrator import queries
from orchestrator.context import Context, of
from orchestrator.dispatch import find_session_dispatch
from orchestrator.errors import LiveKitError
from orchestrator.sessions import fail_session, synthesize_report
from orchestrator.state import TERMINAL, now_ms
from tasks import heartbeat, keys
from tasks.connection import text

log = structlog.get_logger("orchestrator.reconcile")


PAGE = 200
SCAN_COUNT = 500
# Of the whole keyspace, where SCAN finds the room claims: a pass over 20,000 cost a busy worker
# ~40 ms of CPU every 10 s; at 5,000 a million keys are swept in under an hour.
SWEEP_KEYS_PER_PASS = 5_000


async def reconcile_sessions(ctx: dict[str, Any]) -> dict[str, int]:
    c = of(ctx)
    started = time.perf_counter()
    counts = {"checked": 0, "lost": 0, "adopted": 0, "failed": 0, "claims_freed": 0}
    due = await c.store.due_sessions(now_ms())
    for page in (due[i : i + PAGE] for i in range(0, len(due), PAGE)):
        next_checks: dict[str, int] = {}
        for session_id, (session, last_beat) in zip(
            page, await _read_sessions(c, page), strict=True
        ):
            counts["checked"] += 1
            try:
                outcome = await _reconcile_one(c, session_id, session, last_beat)
            except LiveKitError as exc:
                log.warning(
                    "reconciliation deferred: LiveKit error", session_id=session_id, error=str(exc)
                )
                continue  # still due: the next pass tries again
            if outcome:
                counts[outcome] += 1
            if session is not None and outcome in (None, "adopted"):
                next_checks[session_id] = next_check_ms(c, session, last_beat, now_ms())
        await c.store.schedule_checks(next_checks)
    counts["claims_freed"] = await free_orphan_claims(c)
    await queries.trim_recent_sessions(c.redis, c.settings.session_retention_s)
    log.info("reconciliation", duration_s=round(time.perf_counter() - started, 3), **counts)
    return counts


async def _read_sessions(
    c: Context, session_ids: list[str]
) -> list[tuple[dict[str, str] | None, int | None]]:
    """Each session's record (None when gone) and its agent's last heartbeat, in one trip."""
    return [
        (session, heartbeat.beat_ms(beat)) for session, beat in await c.store.read_live(session_ids)
    ]


async def _reconcile_one(
    c: Context, session_id: str, session: dict[str, str] | None, last_beat: int | None
) -> str | None:
    if session is None or session.get("status") in TERMINAL:
        await c.store.forget(session_id)
        return None
    status, now = session.get("status", ""), now_ms()
    grace_ms = c.settings.report_grace_s * 1000

    if status == "claimed":
        return await _stale_claim(c, session, now)

    if status == "dispatched":
        await _ensure_confirmation(c, session, now)

    gone_since = int(session.get("gone_since") or 0)
    if gone_since and now - gone_since > grace_ms:
        return await _lost(
            c,
            session,
            f"LiveKit saw the agent go (room closed, dispatch deleted or agent left) "
            f"{round((now - gone_since) / 1000)} s ago and no report arrived within "
            f"{c.settings.report_grace_s:g} s",
        )

    if last_beat is not None:
        if now - last_beat <= grace_ms:
            return None
        silent_s = round((now - last_beat) / 1000)
        return await _lost(
            c,
            session,
            f"agent stopped sending heartbeats {silent_s} s ago and sent no report: "
            "its job process died without running its shutdown code (killed, out of memory?)",
        )

    assigned_at = int(session.get("assigned_at") or 0)
    if c.settings.agent_heartbeats and assigned_at and now - assigned_at > grace_ms:
        return await _lost(
            c,
            session,
            f"the agent took the job {round((now - assigned_at) / 1000)} s ago but "
            "never signalled that its session started: its job process died at start-up",
        )

    # An agent that sends no heartbeats (not ours): its dispatch vanishing from LiveKit is
    # the only sign it is gone.
    started = int(session.get("dispatched_at") or session.get("claimed_at") or now)
    if gone_since or now - started <= c.settings.assignment_check_delay_s * 1000 + grace_ms:
        return None
    if await find_session_dispatch(c, session["room"], session_id) is None:
        await c.store.transition(session_id, (status,), gone_since=now)
    return None


def next_check_ms(c: Context, session: dict[str, str], last_beat: int | None, now: int) -> int:
    """When reconciliation should next look at a live session (unix ms): the earliest time
    a rule of `_reconcile_one` could apply to what it is now, at the latest
    `session_check_every_s` from now."""
    s = c.settings
    grace_ms = int(s.report_grace_s * 1000)
    status = session.get("status")
    times = [now + max(1, int(s.session_check_every_s * 1000))]
    if status == "claimed":
        times.append(int(session.get("claimed_at") or now) + int(s.claim_stale_s * 1000))
    else:
        if status == "dispatched":
            times.append(_confirmation_due(c, session, now))
        if gone_since := int(session.get("gone_since") or 0):
            times.append(gone_since + grace_ms)
        if last_beat is not None:
            times.append(last_beat + grace_ms)
        if s.agent_heartbeats and (assigned_at := int(session.get("assigned_at") or 0)):
            times.append(assigned_at + grace_ms)
        started = int(session.get("dispatched_at") or session.get("claimed_at") or now)
        times.append(started + int(s.assignment_check_delay_s * 1000) + grace_ms)
    return min(t for t in times if t > now)


def _confirmation_due(c: Context, session: dict[str, str], now: int) -> int:
    """When a dispatch's assignment check is overdue (its confirm job lost in a crash)."""
    attempts = max(1, int(session.get("attempts") or 1))
    return int(session.get("dispatched_at") or now) + int(
        (c.settings.assignment_check_delay_s * 2**attempts + c.settings.report_grace_s) * 1000
    )


async def _ensure_confirmation(c: Context, session: dict[str, str], now: int) -> None:
    """A dispatch whose assignment check is overdue (its confirm job was lost in a crash)
    gets one; arq's job id makes this a no-op while the original is queued or kept."""
    attempts = max(1, int(session.get("attempts") or 1))
    if now < _confirmation_due(c, session, now):
        return
    dispatch_id = session.get("dispatch_id", "")
    await c.redis.enqueue_job(
        keys.CONFIRM_ASSIGNMENT,
        session["session_id"],
        dispatch_id,
        attempts,
        _job_id=keys.confirm_job_id(session["session_id"], dispatch_id),
        _queue_name=keys.QUEUE_NAME,
    )


async def _lost(c: Context, session: dict[str, str], reason: str) -> str | None:
    if session.get("dispatch_id"):
        await c.livekit.delete_dispatch(session["dispatch_id"], session["room"])
    filed = await synthesize_report(
        c, session, status="lost", reason=reason, end_reason="agent_lost"
    )
    if filed:
        log.warning(
            "session lost", session_id=session["session_id"], room=session["room"], reason=reason
        )
    return "lost" if filed else None


async def _stale_claim(c: Context, session: dict[str, str], now: int) -> str | None:
    """A session still `claimed` long after its claim: its dispatch job died for good (arq
    gave up on it). Adopt a dispatch it made, or fail it so the room is free again."""
    claimed_at = int(session.get("claimed_at") or now)
    if now - claimed_at <= c.settings.claim_stale_s * 1000:
        return None
    event_id = session.get("event_id", "")
    if await c.redis.exists(keys.ARQ_JOB_PREFIX + keys.dispatch_job_id(event_id)):
        return None  # arq still holds the job and will run it again
    session_id = session["session_id"]
    dispatch = await find_session_dispatch(c, session["room"], session_id)
    if dispatch is not None:
        payload = await c.redis.get(keys.session_payload_key(session_id))
        await c.store.mark_dispatched(
            session_id,
            event_id,
            dispatch.id,
            payload.decode() if payload else dispatch.metadata,
            check_in_s=c.settings.assignment_check_delay_s,
            attempt=1,
        )
        return "adopted"
    await fail_session(
        c,
        session_id=session_id,
        event_id=event_id,
        room=session["room"],
        agent_name=session.get("agent_name", ""),
        generation=int(session.get("generation") or 0),
        reason=f"the dispatch job for this event stopped after claiming the room and never "
        f"dispatched (last error: {session.get('last_error') or 'none recorded'})",
        event={"event_id": event_id, "room": session["room"]},
        job_id="reconcile",
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
