"""The agent's sign of life for a session, read by the orchestrator's reconciliation."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from tasks.keys import agent_heartbeat_key

HEARTBEAT_TTL_S = 24 * 3600


async def beat(redis: Redis, session_id: str) -> None:
    await redis.set(agent_heartbeat_key(session_id), int(time.time() * 1000), ex=HEARTBEAT_TTL_S)


def beat_ms(value: bytes | str | None) -> int | None:
    """The time (unix ms) a heartbeat key's value says, None for no heartbeat."""
    return int(value) if value is not None else None
