"""The one read path for sessions and queues: the jobs, the HTTP API, the dashboard and the CLI
read session records through here, as `Session` records."""

from __future__ import annotations

import time
from typing import NamedTuple

from redis.asyncio import Redis

from orchestrator.store.record import Session
from tasks import keys
from tasks.connection import text

LIVE_PAGE = 200
"""Live sessions read in one round trip (the dashboard shows this many)."""


async def get_session(redis: Redis, session_id: str) -> Session | None:
    raw = await redis.hgetall(keys.session_key(session_id))  # type: ignore[misc]
    return Session.parse(raw)


MAX_CHAIN = 100
"""A chain of replacements is read this far either way (the restart budget keeps it short)."""


async def chain(redis: Redis, session: Session) -> list[str]:
    """The session ids of `session`'s event, first to last, linked by failover (`replaces`,
    `replaced_by`); just its own when its agent was never replaced."""
    before: list[str] = []
    link = session.replaces
    while link and len(before) < MAX_CHAIN:
        before.insert(0, link)
        raw = await redis.hget(keys.session_key(link), "replaces")  # type: ignore[misc]
        link = text(raw) if raw else None
    after: list[str] = []
    link = session.replaced_by
    while link and len(after) < MAX_CHAIN:
        after.append(link)
        raw = await redis.hget(keys.session_key(link), "replaced_by")  # type: ignore[misc]
        link = text(raw) if raw else None
    return [*before, session.session_id, *after]


async def newest_in_room(redis: Redis, room: str) -> Session | None:
    """The room's newest session, live or not."""
    ids = await redis.zrevrange(keys.room_sessions_key(room), 0, 0)
    return await get_session(redis, text(ids[0])) if ids else None


async def find_live(
    redis: Redis, *, session_id: str | None = None, room: str | None = None
) -> Session | None:
    """The live session with this id, or the one holding this room's claim."""
    if session_id is None:
        assert room is not None, "find_live needs a session_id or a room"
        holder = await redis.get(keys.room_claim_key(room))
        if holder is None:
            return None
        session_id = text(holder)
    session = await get_session(redis, session_id)
    return session if session is not None and session.live else None


class DispatchTime(NamedTuple):
    at_ms: int
    """When the session was dispatched (unix ms)."""
    ms: int
    """How long after its event was enqueued."""
    room: str


async def _read(redis: Redis, session_ids: list[bytes | str]) -> list[Session]:
    """Records in one round trip, those still there."""
    async with redis.pipeline(transaction=False) as pipe:
        for sid in session_ids:
            pipe.hgetall(keys.session_key(text(sid)))
        rows = await pipe.execute()
    return [session for raw in rows if (session := Session.parse(raw)) is not None]


async def list_sessions(
    redis: Redis,
    *,
    status: str | None = None,
    agent_name: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int = 50,
) -> list[Session]:
    """Newest first; filtered by status, agent name and creation time."""
    top = "+inf" if until_ms is None else until_ms
    bottom = "-inf" if since_ms is None else since_ms
    found: list[Session] = []
    filtered = status is not None or agent_name is not None
    offset, page = 0, max(limit * 4, 100) if filtered else limit
    while len(found) < limit:
        ids = await redis.zrevrangebyscore(
            keys.RECENT_SESSIONS, top, bottom, start=offset, num=page
        )
        if not ids:
            break
        offset += len(ids)
        for session in await _read(redis, ids):
            if status and session.status != status:
                continue
            if agent_name and session.agent_name != agent_name:
                continue
            found.append(session)
            if len(found) == limit:
                break
    return found


async def dispatch_times(redis: Redis, *, since_ms: int, limit: int) -> list[DispatchTime]:
    """When each of the newest `limit` sessions created since `since_ms` was dispatched, and
    how long after its event: three fields a session, in one round trip (the dashboard's
    chart, which a full read of thousands of records made slow)."""
    ids = await redis.zrevrangebyscore(keys.RECENT_SESSIONS, "+inf", since_ms, start=0, num=limit)
    async with redis.pipeline(transaction=False) as pipe:
        for sid in ids:
            pipe.hmget(keys.session_key(text(sid)), ["enqueued_at", "dispatched_at", "room"])
        rows = await pipe.execute()
    return [
        DispatchTime(int(dispatched), int(dispatched) - int(enqueued), text(room or b""))
        for enqueued, dispatched, room in rows
        if enqueued and dispatched
    ]


async def live_sessions(redis: Redis, *, limit: int = LIVE_PAGE) -> tuple[list[Session], int]:
    """The oldest `limit` sessions not yet terminal, and how many are live in all: two round
    trips, however many there are."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrange(keys.LIVE_SESSIONS, 0, limit - 1)
        pipe.zcard(keys.LIVE_SESSIONS)
        ids, total = await pipe.execute()
    sessions = [s for s in await _read(redis, ids) if s.live]
    return sessions, int(total)


async def queue_depth(redis: Redis) -> int:
    """Jobs waiting in the arq queue (including deferred ones)."""
    return int(await redis.zcard(keys.QUEUE_NAME))


async def trim_recent_sessions(redis: Redis, retention_s: int) -> int:
    """Forget session ids older than the retention from the recent index."""
    cutoff = int((time.time() - retention_s) * 1000)
    return int(await redis.zremrangebyscore(keys.RECENT_SESSIONS, "-inf", cutoff))
