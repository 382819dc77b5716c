"""Read-only views of sessions and queues, shared by the HTTP API, the dashboard and the CLI."""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from tasks import keys
from tasks.connection import text

SESSION_STATUSES = ("claimed", "dispatched", "assigned", "ending", "completed", "failed", "lost")
_INT_FIELDS = (
    "enqueued_at", "claimed_at", "dispatched_at", "assigned_at", "ended_at", "end_requested_at",
    "attempts", "generation",
)  # fmt: skip


def session_view(raw: dict[Any, Any]) -> dict[str, Any]:
    """A session record as JSON-able fields, with times in unix ms and its age."""
    view: dict[str, Any] = {text(k): text(v) for k, v in raw.items()}
    for name in _INT_FIELDS:
        if view.get(name):
            view[name] = int(view[name])
        else:
            view.pop(name, None)
    created = view.get("claimed_at")
    if created:
        view["age_s"] = round(time.time() - created / 1000, 3)
    if view.get("enqueued_at") and view.get("dispatched_at"):
        view["time_to_dispatch_ms"] = view["dispatched_at"] - view["enqueued_at"]
    return view


async def get_session(redis: Redis, session_id: str) -> dict[str, Any] | None:
    raw = await redis.hgetall(keys.session_key(session_id))  # type: ignore[misc]
    return session_view(raw) if raw else None


async def session_by_room(redis: Redis, room: str) -> dict[str, Any] | None:
    """The room's newest session."""
    ids = await redis.zrevrange(keys.room_sessions_key(room), 0, 0)
    return await get_session(redis, text(ids[0])) if ids else None


async def list_sessions(
    redis: Redis,
    *,
    status: str | None = None,
    agent_name: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Newest first; filtered by status, agent name and creation time."""
    top = "+inf" if until_ms is None else until_ms
    bottom = "-inf" if since_ms is None else since_ms
    found: list[dict[str, Any]] = []
    offset, page = 0, max(limit * 4, 100)
    while len(found) < limit:
        ids = await redis.zrevrangebyscore(
            keys.RECENT_SESSIONS, top, bottom, start=offset, num=page
        )
        if not ids:
            break
        offset += len(ids)
        async with redis.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.hgetall(keys.session_key(text(sid)))
            rows = await pipe.execute()
        for raw in rows:
            if not raw:
                continue
            view = session_view(raw)
            if status and view.get("status") != status:
                continue
            if agent_name and view.get("agent_name") != agent_name:
                continue
            found.append(view)
            if len(found) == limit:
                break
    return found


async def live_sessions(redis: Redis) -> list[dict[str, Any]]:
    """Sessions not yet terminal, oldest first."""
    ids = await redis.zrange(keys.LIVE_SESSIONS, 0, -1)
    views = [await get_session(redis, text(sid)) for sid in ids]
    return [v for v in views if v]


async def queue_depth(redis: Redis) -> int:
    """Jobs waiting in the arq queue (including deferred ones)."""
    return int(await redis.zcard(keys.QUEUE_NAME))


async def trim_recent_sessions(redis: Redis, retention_s: int) -> int:
    """Forget session ids older than the retention from the recent index."""
    cutoff = int((time.time() - retention_s) * 1000)
    return int(await redis.zremrangebyscore(keys.RECENT_SESSIONS, "-inf", cutoff))
