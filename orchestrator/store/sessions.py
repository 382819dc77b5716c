"""Session state in Redis: the per-room claim, event idempotency, session records, and the
exactly-once filing of terminal reports. Each decision that must be atomic is one Lua script.

A session moves (waiting →) claimed → dispatched → assigned → (ending) → completed | failed |
lost: it waits only where its agent name's capacity is known and no slot is free (store.line).
The room claim exists exactly while the room's session is not terminal.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from orchestrator.store import lua, queries
from orchestrator.store.connections import UNREACHABLE
from orchestrator.store.line import LineConfig
from orchestrator.store.record import Session, SessionStatus
from orchestrator.store.script_pipe import ScriptPipe
from tasks import keys
from tasks.connection import text
from tasks.models import SessionReport
from tasks.serialization import job_body

CHECK_JOB_TTL_MS = 24 * 3600 * 1000  # arq's default: a job not run a day after it was due expires

ClaimKind = Literal["claimed", "waiting", "resume", "busy", "deduplicated", "duplicate_event"]
LeaseAnswer = Literal["ok", "busy", "moved"]
Filing = Literal["filed", "same", "other"]
"""What filing a report did: filed it; found this same report filed (its job ran again);
found another report filed for the session."""
_FILINGS: dict[int, Filing] = {1: "filed", 2: "same", 0: "other"}
Requeue = Literal["requeued", "moved", "no_line"]
_REQUEUES: dict[int, Requeue] = {1: "requeued", 0: "moved", -1: "no_line"}
DEFAULT_WORKER_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Claim:
    kind: ClaimKind
    session_id: str
    busy_ms: int = 0
    """For `busy`: how long the other run's lease still holds."""
    position: int = 0
    """For `waiting`: its place in the line (1: next out; 0: let out at once)."""


@dataclass(frozen=True)
class Lease:
    """A run's hold on a session while it may create or replace the session's dispatch: so
    that two runs of one step (arq may start a job again while an earlier run of it lives,
    after Redis lost its in-progress mark) never put two agents in the room. It expires on
    its own when its holder dies."""

    token: str
    ttl_ms: int


def now_ms() -> int:
    return int(time.time() * 1000)


class SessionStore:
    def __init__(
        self,
        redis: Redis,
        *,
        retention_s: int,
        event_retention_s: int,
        record_linger_s: float = 0.0,
        first_check_s: float = 0.0,
        line: LineConfig | None = None,
    ) -> None:
        """`first_check_s`: how long after its claim reconciliation first looks at a session;
        `line`: the agent names' static capacities and how long a worker's capacity counts."""
        self.redis = redis
        self.line = line or LineConfig({}, DEFAULT_WORKER_TIMEOUT_S)
        self.retention_s = retention_s
        self.event_retention_s = event_retention_s
        self.record_linger_s = record_linger_s
        self.first_check_ms = int(first_check_s * 1000)
        self._schedule_complete = False
        self.scripts = ScriptPipe(redis)
        self._claim = self.scripts.script(lua.CLAIM)
        self._file = self.scripts.script(lua.FILE_REPORT)
        self._transition = self.scripts.script(lua.TRANSITION)
        self._mark_dispatched = self.scripts.script(lua.MARK_DISPATCHED)
        self._read_sessions = self.scripts.script(lua.READ_SESSIONS)
        self._free_orphan_claims = self.scripts.script(lua.FREE_ORPHAN_CLAIMS)
        self._lease = self.scripts.script(lua.LEASE)
        self._release = self.scripts.script(lua.RELEASE)
        self._requeue = self.scripts.script(lua.REQUEUE)
        self._move_line = self.scripts.script(lua.MOVE_LINE)
        self._replace = self.scripts.script(lua.REPLACE)

    async def claim(
        self,
        *,
        session_id: str,
        generation: int,
        event_id: str,
        room: str,
        agent_name: str,
        enqueued_ms: int,
        dispatch_job: str,
        lease: Lease,
        job_metadata: str = "",
        priority: int = 0,
        expires_ms: int | None = None,
        restart_policy: str = "on_failure",
        linger_s: float = 0.0,
    ) -> Claim:
        """Claim `room` for the session, atomically with the event's idempotency record, and
        take the session's `lease` (`dispatch_job` is the arq job that dispatches it); the
        claim may wait up to `linger_s` to share a write (script_pipe). Where the agent
        name's capacity is known, it takes a slot too, or the session waits in the line
        (`waiting`) with its `job_metadata` kept for when it is let out."""
        now = now_ms()
        kind, holder, *extra = await self.scripts.run(
            self._claim,
            keys=[
                keys.event_key(event_id),
                keys.room_claim_key(room),
                keys.session_key(session_id),
                keys.LIVE_SESSIONS,
                keys.RECENT_SESSIONS,
                keys.room_sessions_key(room),
                keys.RECONCILE_DUE,
                keys.session_lease_key(session_id),
                keys.session_payload_key(session_id),
            ],
            args=[
                session_id,
                generation,
                now,
                self.event_retention_s,
                self.retention_s,
                event_id,
                room,
                agent_name,
                enqueued_ms,
                keys.session_key(""),
                now + self.first_check_ms,
                dispatch_job,
                lease.token,
                lease.ttl_ms,
                priority,
                expires_ms if expires_ms is not None else "",
                job_metadata,
                "" if restart_policy == "on_failure" else restart_policy,
                *self.line.args(now),
            ],
            linger_s=linger_s,
        )
        kind = text(kind)
        if kind == "waiting":
            return Claim("waiting", text(holder), position=int(extra[0]))
        return Claim(kind, text(holder), int(extra[0]) if extra else 0)  # type: ignore[arg-type]

    async def record_event(self, event_id: str, outcome: str, *, overwrite: bool) -> None:
        """Set an event's outcome, so a replay of it is recognised; without `overwrite`, only
        for an event not seen before."""
        key = keys.event_key(event_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            if overwrite:
                pipe.hset(key, "outcome", outcome)
            else:
                pipe.hsetnx(key, "outcome", outcome)
            pipe.hset(key, "at", str(now_ms()))
            pipe.expire(key, self.event_retention_s)
            await pipe.execute()

    async def transition(
        self,
        session_id: str,
        expected: Collection[SessionStatus],
        *,
        having_dispatch: str = "",
        **fields: Any,
    ) -> bool:
        """Set fields only while the session is in one of `expected` (and, when given, still
        has the dispatch `having_dispatch`); False otherwise."""
        args: list[Any] = [",".join(sorted(expected)), having_dispatch]
        for name, value in fields.items():
            args += [name, "" if value is None else value]
        return bool(
            await self.scripts.run(self._transition, keys=[keys.session_key(session_id)], args=args)
        )

    async def mark_dispatched(
        self,
        session_id: str,
        event_id: str,
        dispatch_id: str,
        payload: str,
        *,
        check_in_s: float,
        attempt: int,
        replaces: str = "",
        lease: Lease | None = None,
    ) -> bool:
        """Record the session's dispatch (its first, or the one that `replaces` an earlier)
        and queue its `attempt`-th assignment check `check_in_s` from now; give up `lease`.
        False when the session no longer waits for this dispatch (it ended, or another run
        recorded a dispatch first): the caller withdraws it. The record may linger up to
        `record_linger_s` to share a write (script_pipe)."""
        now = now_ms()
        job_id = keys.confirm_job_id(session_id, dispatch_id)
        body = job_body(keys.CONFIRM_ASSIGNMENT, [session_id, dispatch_id, attempt], enqueue_ms=now)
        due = now + int(check_in_s * 1000)
        return bool(
            await self.scripts.run(
                self._mark_dispatched,
                keys=[
                    keys.session_key(session_id),
                    keys.event_key(event_id),
                    keys.session_payload_key(session_id),
                    keys.ARQ_JOB_PREFIX + job_id,
                    keys.ARQ_RESULT_PREFIX + job_id,
                    keys.QUEUE_NAME,
                    keys.session_lease_key(session_id),
                ],
                args=[
                    dispatch_id,
                    now,
                    payload,
                    self.retention_s,
                    job_id,
                    body,
                    due,
                    due - now + CHECK_JOB_TTL_MS,
                    replaces,
                    lease.token if lease is not None else "",
                ],
                linger_s=self.record_linger_s,
            )
        )

    async def file_report(self, report: SessionReport) -> Filing:
        """Append the session's terminal report to the results stream, mark it terminal and
        free its room, all at once; unless the session has its report already: this same one
        (its job ran again), or another."""
        body, digest, field_pairs = _filed(report)
        completed_in = report.duration_s if report.status == "completed" else None
        args: list[Any] = [
            report.session_id,
            report.status,
            body,
            report.event_id,
            report.room,
            self.retention_s,
            keys.RESULTS_STREAM_MAXLEN,
            digest,
            "" if completed_in is None else round(completed_in, 3),
            *self.line.args(now_ms()),
            *field_pairs,
        ]
        filed = await self.scripts.run(
            self._file,
            keys=_filing_keys(report),
            args=args,
        )
        return _FILINGS[filed]

    async def replace(
        self, report: SessionReport, replacement: Replacement
    ) -> Filing | Literal["not_holder"]:
        """File the `lost` `report` of a session whose agent died and put in `replacement`,
        in one step (store.lua.REPLACE): the room's claim and slot pass to it, and its
        dispatch job is queued. As file_report answers; `not_holder` (nothing done) when the
        old session no longer holds the room."""
        new_id = replacement.session_id
        now = now_ms()
        job_id = keys.replacement_dispatch_job_id(new_id)
        body, digest, field_pairs = _filed(report)
        answer = await self.scripts.run(
            self._replace,
            keys=[
                *_filing_keys(report),
                keys.session_key(new_id),
                keys.session_payload_key(new_id),
                keys.event_key(report.event_id),
                keys.RECENT_SESSIONS,
                keys.room_sessions_key(report.room),
                keys.ARQ_JOB_PREFIX + job_id,
                keys.QUEUE_NAME,
            ],
            args=[
                report.session_id,
                body,
                report.event_id,
                report.room,
                self.retention_s,
                keys.RESULTS_STREAM_MAXLEN,
                digest,
                new_id,
                now,
                replacement.job_metadata,
                now + self.first_check_ms,
                job_id,
                job_body(keys.DISPATCH_FROM_LINE, [new_id], enqueue_ms=now),
                CHECK_JOB_TTL_MS,
                replacement.restart,
                ",".join(map(str, replacement.restarts)),
                *field_pairs,
            ],
        )
        return "not_holder" if int(answer) == -1 else _FILINGS[int(answer)]

    async def requeue(self, session_id: str, dispatch_id: str, lease: Lease) -> Requeue:
        """Put a session whose dispatch `dispatch_id` no worker took back at its place in the
        line, freeing its slot and `lease`: `requeued`; `moved` when the session is no longer
        as found; `no_line` when its agent name has no known capacity."""
        answer = await self.scripts.run(
            self._requeue,
            keys=[keys.session_key(session_id), keys.session_lease_key(session_id)],
            args=[dispatch_id, lease.token, *self.line.args(now_ms())],
        )
        return _REQUEUES[int(answer)]

    async def move_line(self, agent_name: str, *, sweep: bool = False) -> int:
        """Let waiting sessions of `agent_name` out into the free slots (after freeing the
        slots of sessions that ended, with `sweep`); how many went."""
        return int(
            await self.scripts.run(
                self._move_line,
                keys=[],
                args=[agent_name, "1" if sweep else "0", *self.line.args(now_ms())],
            )
        )

    async def take_lease(
        self, session_id: str, lease: Lease, *, status: str, dispatch_id: str = ""
    ) -> tuple[LeaseAnswer, int]:
        """Take the session's lease for a step that may dispatch, if the session is still
        `status` (with `dispatch_id`, when given) and no other run holds the lease: the
        answer, and for `busy` how long the other run's lease still holds (ms)."""
        answer, *busy = await self.scripts.run(
            self._lease,
            keys=[keys.session_key(session_id), keys.session_lease_key(session_id)],
            args=[lease.token, lease.ttl_ms, status, dispatch_id],
        )
        return text(answer), int(busy[0]) if busy else 0  # type: ignore[return-value]

    async def release_lease(self, session_id: str, lease: Lease) -> None:
        await self.scripts.run(
            self._release, keys=[keys.session_lease_key(session_id)], args=[lease.token]
        )

    @contextlib.asynccontextmanager
    async def holding(self, session_id: str, lease: Lease) -> AsyncIterator[None]:
        """A step that holds the session's lease: should it stop short (an error, a retry,
        its job's timeout), the lease is given up at once, for the next run of the step (it
        expires by itself if Redis is away)."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(RedisError, *UNREACHABLE):
                await self.release_lease(session_id, lease)
            raise

    async def read_live(self, session_ids: list[str]) -> list[tuple[Session | None, bytes | None]]:
        """Each session's record (None when gone) and its agent's last heartbeat value."""
        if not session_ids:
            return []
        replies = await self.scripts.run(
            self._read_sessions,
            keys=[
                *map(keys.session_key, session_ids),
                *map(keys.agent_heartbeat_key, session_ids),
            ],
            args=[],
        )
        return [(Session.parse(_fields(flat)), beat) for flat, beat in replies]

    async def free_orphan_claims(self, claim_keys: list[str]) -> int:
        """Of these room claim keys, delete those whose session is terminal or gone."""
        if not claim_keys:
            return 0
        return int(
            await self.scripts.run(
                self._free_orphan_claims, keys=claim_keys, args=[keys.session_key("")]
            )
        )

    async def get(self, session_id: str) -> Session | None:
        return await queries.get_session(self.redis, session_id)

    async def find_live(
        self, *, session_id: str | None = None, room: str | None = None
    ) -> Session | None:
        """The live session with this id, or the one holding this room's claim."""
        return await queries.find_live(self.redis, session_id=session_id, room=room)

    async def recorded_dispatch(self, session_id: str) -> str | None:
        """The dispatch id the session's record holds, if any."""
        value = await self.redis.hget(keys.session_key(session_id), "dispatch_id")  # type: ignore[misc]
        return text(value) if value else None

    async def room_holder(self, room: str) -> str | None:
        holder = await self.redis.get(keys.room_claim_key(room))
        return text(holder) if holder else None

    async def due_sessions(self, now: int) -> list[str]:
        """Live sessions reconciliation should look at by `now` (unix ms), most overdue first.

        On this store's first call, live sessions missing from the schedule (it was lost, or
        restored from an older copy than the live set) join it, due at once: once only, since
        it blocks Redis for a while on a big set, and every claim schedules its session."""
        if not self._schedule_complete:
            await self.redis.zunionstore(
                keys.RECONCILE_DUE,
                {keys.RECONCILE_DUE: 1, keys.LIVE_SESSIONS: 0},
                aggregate="MAX",
            )
            self._schedule_complete = True
        return [text(s) for s in await self.redis.zrangebyscore(keys.RECONCILE_DUE, "-inf", now)]

    async def schedule_checks(self, due: dict[str, int]) -> None:
        """When reconciliation next looks at each session (unix ms); a session that ended
        meanwhile is not put back."""
        if due:
            await self.redis.zadd(keys.RECONCILE_DUE, due, xx=True)

    async def forget(self, session_id: str) -> None:
        """Drop a session that is terminal or gone from the live indexes."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.LIVE_SESSIONS, session_id)
            pipe.zrem(keys.RECONCILE_DUE, session_id)
            await pipe.execute()

    async def aclose(self) -> None:
        """Close the store's script connection (before closing `redis`)."""
        await self.scripts.aclose()


@dataclass(frozen=True)
class Replacement:
    """The session that takes over from one whose agent died."""

    session_id: str
    job_metadata: str
    restart: int
    """Its number in the event's chain of replacements (1 for the first)."""
    restarts: list[int]
    """When the chain's sessions were replaced (unix ms), this one included."""


def _filing_keys(report: SessionReport) -> list[str]:
    """The keys that filing `report` touches (FILE_REPORT's, and REPLACE's first)."""
    sid = report.session_id
    return [
        keys.report_filed_key(sid),
        keys.RESULTS_STREAM,
        keys.session_key(sid),
        keys.LIVE_SESSIONS,
        keys.room_claim_key(report.room),
        keys.session_payload_key(sid),
        keys.RECONCILE_DUE,
        keys.session_lease_key(sid),
    ]


def _filed(report: SessionReport) -> tuple[str, str, list[Any]]:
    """A report as filing keeps it: its JSON, that JSON's digest (a report filed twice is
    told from another), and the session record's fields it sets (name, value, ...)."""
    fields: dict[str, Any] = {
        "ended_at": int(report.ended_at.timestamp() * 1000),
        "end_reason": report.end_reason,
        "last_error": report.error or "",
        "report_source": report.source,
    }
    for name in ("dispatch_id", "job_id", "worker_id", "replaced_by"):
        value = getattr(report, name)
        if value:
            fields[name] = value
    body = report.model_dump_json()
    digest = hashlib.blake2b(body.encode(), digest_size=16).hexdigest()
    return body, digest, [item for pair in fields.items() for item in pair]


def _fields(flat: list[bytes]) -> dict[str, str]:
    """A hash as HGETALL answers it inside a script (field, value, field, value, ...)."""
    pairs = iter(flat)
    return {name.decode(): value.decode() for name, value in zip(pairs, pairs, strict=True)}
