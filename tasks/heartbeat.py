"""The agent's signs of life, read by the orchestrator.

Per session: a heartbeat, which reconciliation takes for the agent alive while it is fresh, and
the job named with the first beat, which confirms the dispatch's assignment. Per agent worker
process: a record of the sessions it holds, starting or running, so that a session waiting for
a job process, or one whose process has just died, is told apart without a timer; and the
slots it offers its agent name's waiting line (`keys.fleet_key`), which lapse with its beat.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Literal

from redis.asyncio import Redis

from tasks.keys import (
    AGENT_EXITED,
    AGENT_WORKERS,
    ARQ_JOB_PREFIX,
    ARQ_RESULT_PREFIX,
    LINE_NAMES,
    MOVE_LINE,
    QUEUE_NAME,
    agent_exited_job_id,
    agent_heartbeat_key,
    agent_job_key,
    agent_worker_key,
    fleet_key,
    move_line_job_id,
    report_filed_key,
    report_job_id,
)
from tasks.producer import enqueue_job
from tasks.serialization import job_body

HEARTBEAT_TTL_S = 24 * 3600
MOVE_LINE_JOB_TTL_MS = 3600 * 1000
AGENT_JOB_TTL_S = 3600  # the assignment check reads it within minutes; LiveKit tells after


@dataclass(frozen=True)
class AgentJob:
    """The LiveKit job an agent runs a session in."""

    dispatch_id: str
    job_id: str
    worker_id: str


async def beat(redis: Redis, session_id: str, job: AgentJob | None = None) -> None:
    """Refresh the session's heartbeat; with `job` (the first beat), also say which job runs
    it, in the same step."""
    now_ms = int(time.time() * 1000)
    if job is None:
        await redis.set(agent_heartbeat_key(session_id), now_ms, ex=HEARTBEAT_TTL_S)
        return
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(agent_heartbeat_key(session_id), now_ms, ex=HEARTBEAT_TTL_S)
        pipe.set(agent_job_key(session_id), json.dumps(asdict(job)), ex=AGENT_JOB_TTL_S)
        await pipe.execute()


def beat_ms(value: bytes | str | None) -> int | None:
    """The time (unix ms) a heartbeat key's value says, None for no heartbeat."""
    return int(value) if value is not None else None


async def agent_job(redis: Redis, session_id: str) -> AgentJob | None:
    """The job the session's agent said it took, if it did, with the three ids as non-empty
    strings (other fields are ignored: a later agent may say more)."""
    raw = await redis.get(agent_job_key(session_id))
    try:
        fields = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    ids = [fields.get(name) for name in ("dispatch_id", "job_id", "worker_id")]
    strings = [value for value in ids if isinstance(value, str) and value]
    if len(strings) != len(ids):
        return None
    return AgentJob(*strings)


SessionHold = Literal["starting", "running"]
JobType = Literal["room", "publisher"]
WORKER_RECORD_TTL_S = 3600  # read by its beat's age, not by its presence; kept to be shown


DEFAULT_PERMISSIONS = {
    "can_publish": True,
    "can_subscribe": True,
    "can_publish_data": True,
    "can_update_metadata": True,
    "hidden": False,
}
"""livekit-agents' WorkerPermissions defaults, which the agent's settings keep."""


@dataclass(frozen=True)
class WorkerRecord:
    """An agent worker process's sign of life: who it is and the sessions it holds. A session
    is `starting` from the moment the worker accepts its job until its job process runs it
    (which may wait for a free process), then `running` until that process exits."""

    instance: str
    """This worker process, for its whole life (LiveKit gives it a new id on reconnection)."""
    agent_name: str
    worker_id: str
    """Its current LiveKit worker id ("" until registered)."""
    max_sessions: int
    sessions: dict[str, SessionHold]
    """Session id → how it holds it."""
    at_ms: int = 0
    """When it wrote this (unix ms)."""
    permissions: dict[str, bool] = field(default_factory=dict)
    """What its agents may do in a room (AGENT_CAN_PUBLISH, ..., AGENT_HIDDEN); a permission
    it does not name has its DEFAULT_PERMISSIONS value."""
    full: bool = False
    """It reports itself full to LiveKit (its load reached its threshold: its session limit,
    or its CPU)."""
    job_type: JobType = "room"
    """AGENT_JOB_TYPE: `room` (a job per dispatch) or `publisher` (a job per publisher)."""

    @property
    def offered(self) -> int:
        """The slots it offers its agent name: none before it is registered with LiveKit (no
        job could reach it); while full, only those it holds; else its session limit."""
        if not self.worker_id:
            return 0
        if self.full:
            return min(len(self.sessions), self.max_sessions)
        return self.max_sessions

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerRecord | None:
        """The record, or None for anything that is not one (other fields are ignored)."""
        try:
            fields = json.loads(raw)
            sessions = fields["sessions"]
            record = cls(
                instance=str(fields["instance"]),
                agent_name=str(fields["agent_name"]),
                worker_id=str(fields["worker_id"]),
                max_sessions=int(fields["max_sessions"]),
                sessions={
                    str(sid): hold
                    for sid, hold in sessions.items()
                    if hold in ("starting", "running")
                },
                at_ms=int(fields["at_ms"]),
                permissions={
                    str(k): v
                    for k, v in dict(fields.get("permissions") or {}).items()
                    if isinstance(v, bool)
                },
                full=fields.get("full") is True,
                job_type="publisher" if fields.get("job_type") == "publisher" else "room",
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return record


async def beat_worker(redis: Redis, record: WorkerRecord, *, grew: bool = False) -> None:
    """Write the worker's record, stamped now, and the slots it offers its agent name; when
    it offers more than at its last beat (it joined, or is no longer full), also queue a
    `move_line` job, so that sessions waiting for those slots go at once."""
    now_ms = int(time.time() * 1000)
    stamped = WorkerRecord(**{**asdict(record), "at_ms": now_ms})
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(agent_worker_key(record.instance), stamped.to_json(), ex=WORKER_RECORD_TTL_S)
        pipe.zadd(AGENT_WORKERS, {record.instance: now_ms})
        if record.agent_name and record.job_type == "room":
            # Publisher workers size no line: their jobs follow the people who publish.
            pipe.hset(fleet_key(record.agent_name), record.instance, f"{now_ms} {record.offered}")
            pipe.sadd(LINE_NAMES, record.agent_name)
            if grew:
                job_id = move_line_job_id(uuid.uuid4().hex)
                body = job_body(MOVE_LINE, [record.agent_name], enqueue_ms=now_ms)
                pipe.set(ARQ_JOB_PREFIX + job_id, body, px=MOVE_LINE_JOB_TTL_MS)
                pipe.zadd(QUEUE_NAME, {job_id: now_ms})
        await pipe.execute()


async def leave_fleet(redis: Redis, record: WorkerRecord) -> None:
    """A worker that stops takes its slots with it at once (a killed one, when its beat
    lapses); one that holds no session any more also leaves the list of workers, so that its
    beat's silence is no death to look into (orchestrator.jobs.fleet)."""
    async with redis.pipeline(transaction=True) as pipe:
        if record.agent_name:
            pipe.hdel(fleet_key(record.agent_name), record.instance)
        if not record.sessions:
            pipe.zrem(AGENT_WORKERS, record.instance)
        await pipe.execute()


async def worker_records(redis: Redis, since_ms: int) -> list[WorkerRecord]:
    """The records of workers that beat at or after `since_ms` (unix ms); the set forgets
    workers silent for longer than a record is kept."""
    stale = int(time.time() * 1000) - WORKER_RECORD_TTL_S * 1000
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(AGENT_WORKERS, "-inf", stale)
        pipe.zrangebyscore(AGENT_WORKERS, since_ms, "+inf")
        _, instances = await pipe.execute()
    if not instances:
        return []
    raws = await redis.mget([agent_worker_key(i.decode()) for i in instances])
    records = [WorkerRecord.from_json(raw) for raw in raws if raw is not None]
    return [r for r in records if r is not None and r.at_ms >= since_ms]


async def any_report_filed(redis: Redis, session_ids: list[str]) -> bool:
    """Whether any of these sessions has its report on the results stream."""
    if not session_ids:
        return False
    return bool(await redis.exists(*map(report_filed_key, session_ids)))


async def note_exit(redis: Redis, session_id: str, job_id: str) -> bool:
    """The job process that ran `session_id` in LiveKit job `job_id` has exited: unless its
    report is queued or filed (our agent writes it before its process exits), tell the
    orchestrator, which ends the session `lost` at once. Whether it told."""
    report = report_job_id(session_id, job_id)
    if await redis.exists(
        ARQ_JOB_PREFIX + report, ARQ_RESULT_PREFIX + report, report_filed_key(session_id)
    ):
        return False
    await enqueue_job(
        redis, AGENT_EXITED, session_id, job_id, job_id=agent_exited_job_id(session_id, job_id)
    )
    return True
