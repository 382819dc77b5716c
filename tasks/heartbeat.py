"""The agent's sign of life for a session, read by the orchestrator: reconciliation takes a
stale heartbeat for an agent gone, and the assignment check takes the job named with the first
beat for the dispatch assigned."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from tasks.keys import agent_heartbeat_key, agent_job_key

HEARTBEAT_TTL_S = 24 * 3600
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
