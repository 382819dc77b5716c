"""Agents that take a job per publisher (AGENT_JOB_TYPE=publisher): LiveKit starts one job for
each participant that publishes in the room of a dispatch. The event's session is then the
room's, made of parts: each job is a part session of its own (`part_id`), which the agent
opens when its job starts (`open_part`) and reports like any session, with `part_of` the
event's session. The orchestrator reconciles parts as sessions, and ends the event's session
when its room does (or at `end_session`), with a report that lists its parts.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from tasks.connection import text
from tasks.heartbeat import AgentJob
from tasks.keys import (
    LIVE_SESSIONS,
    RECENT_SESSIONS,
    RECONCILE_DUE,
    parts_key,
    session_key,
)

PART_RETENTION_S = 7 * 24 * 3600
"""How long the list of a session's parts is kept (LKD_SESSION_RETENTION_S's default)."""

# KEYS: part session, live set, recent set, reconcile due set, the parts of its session
# ARGV: part id, session id, event id, room, agent name, job id, worker id, publisher, now
#       (ms), retention (s). A part is opened once: 0 when it exists already (a job started
#       again must not bring an ended part back).
OPEN_PART = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'session_id', ARGV[1], 'part_of', ARGV[2], 'event_id', ARGV[3],
           'room', ARGV[4], 'agent_name', ARGV[5], 'status', 'assigned', 'job_id', ARGV[6],
           'worker_id', ARGV[7], 'publisher', ARGV[8], 'job_type', 'publisher',
           'enqueued_at', ARGV[9], 'claimed_at', ARGV[9], 'assigned_at', ARGV[9], 'attempts', 0)
redis.call('ZADD', KEYS[2], ARGV[9], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[9], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[9], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('EXPIRE', KEYS[5], ARGV[10])
return 1
"""


def part_id(session_id: str, job_id: str) -> str:
    """The part session of LiveKit job `job_id` in the event's session `session_id`."""
    return f"{session_id}.{job_id}"


async def open_part(
    redis: Redis,
    part: str,
    *,
    session_id: str,
    event_id: str,
    room: str,
    agent_name: str,
    job: AgentJob,
    publisher: str,
) -> bool:
    """Make the part session's record (live, `assigned`: its job runs), once; whether it was
    new. Its dispatch is the event's session's and is not named on the part: a part that
    dies is `lost` alone, its session's dispatch stands for the others."""
    now_ms = int(time.time() * 1000)
    opened = await redis.eval(
        OPEN_PART,
        5,
        session_key(part),
        LIVE_SESSIONS,
        RECENT_SESSIONS,
        RECONCILE_DUE,
        parts_key(session_id),
        part,
        session_id,
        event_id,
        room,
        agent_name,
        job.job_id,
        job.worker_id,
        publisher,
        str(now_ms),
        str(PART_RETENTION_S),
    )  # type: ignore[misc]
    return bool(opened)


async def parts_of(redis: Redis, session_id: str) -> list[str]:
    """The part sessions of `session_id`, in order of their ids."""
    members = await redis.smembers(parts_key(session_id))  # type: ignore[misc]
    return sorted(text(m) for m in members)
