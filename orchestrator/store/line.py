"""The waiting line per agent name, as Python sees it: the configuration its scripts read
(`LineConfig`), and what the line looks like now (`LineState`, a session's place and its
estimated wait). The decisions themselves (take a slot or wait, let the head out) are Lua
(`store.lua.LUA_LINE`), each in the same step as the change that makes it.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from orchestrator.store import lua
from orchestrator.store.record import Session, SessionStatus
from tasks import keys
from tasks.connection import text
from tasks.serialization import job_body

LINE_JOB_TTL_MS = 24 * 3600 * 1000
_SID, _AT = "@session@", 1_234_567_890_123


def _line_job_parts() -> tuple[str, str, str]:
    """The line dispatch job's body around its session id and enqueue time, so that a script
    writes exactly what `job_body` would."""
    body = job_body(keys.DISPATCH_FROM_LINE, [_SID], enqueue_ms=_AT).decode()
    head, rest = body.split(_SID)
    middle, tail = rest.split(str(_AT))
    return head, middle, tail


_JOB_PARTS = _line_job_parts()


@dataclass(frozen=True)
class LineConfig:
    """What the line's scripts need besides Redis: the static limits of agent names that are
    not ours (LKD_AGENT_CAPACITY), how long a worker's heartbeat counts (its capacity lapses
    with it), and whether there is a line at all (LKD_WAITING_LINE)."""

    static_capacity: Mapping[str, int]
    worker_timeout_s: float
    enabled: bool = True
    _fixed: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        statics = json.dumps(dict(self.static_capacity)) if self.static_capacity else ""
        fixed = ("1" if self.enabled else "0", statics, int(self.worker_timeout_s * 1000))
        object.__setattr__(self, "_fixed", (*fixed, *_JOB_PARTS, LINE_JOB_TTL_MS))

    def args(self, now_ms: int) -> list[Any]:
        """The scripts' line configuration (store.lua.LUA_LINE's `line_config`)."""
        return [*self._fixed, now_ms]


@dataclass(frozen=True)
class LineState:
    agent_name: str
    capacity: int | None
    """The slots its fleet takes now; None when not known (no line: dispatched as ever)."""
    in_use: int
    waiting: int


async def line_state(redis: Redis, config: LineConfig, agent_name: str, now_ms: int) -> LineState:
    capacity, in_use, waiting = await redis.eval(  # type: ignore[misc]
        lua.LINE_STATE, 0, agent_name, *config.args(now_ms)
    )
    return LineState(agent_name, None if capacity < 0 else int(capacity), in_use, waiting)


async def line_names(redis: Redis) -> list[str]:
    """The agent names whose capacity was known at some point (a line may have formed)."""
    return sorted(text(name) for name in await redis.smembers(keys.LINE_NAMES))  # type: ignore[misc]


async def all_lines(redis: Redis, config: LineConfig, now_ms: int) -> list[LineState]:
    """Every agent name's line whose capacity is known, or that has sessions in it."""
    states = [await line_state(redis, config, name, now_ms) for name in await line_names(redis)]
    return [s for s in states if s.capacity is not None or s.in_use or s.waiting]


async def place(redis: Redis, config: LineConfig, session: Session, now_ms: int) -> dict[str, Any]:
    """A waiting session's `queue_position` (1: next out) and `estimated_wait_s` (None when
    nothing tells: no capacity, or no session of that agent name completed lately); empty
    for a session that is not waiting."""
    if session.status != SessionStatus.WAITING:
        return {}
    rank = await redis.zrank(keys.line_key(session.agent_name), session.session_id)
    if rank is None:
        return {}
    position = int(rank) + 1
    state = await line_state(redis, config, session.agent_name, now_ms)
    recent = await redis.lrange(keys.durations_key(session.agent_name), 0, -1)  # type: ignore[misc]
    durations = [float(d) for d in recent]
    return {
        "queue_position": position,
        "estimated_wait_s": estimated_wait_s(position, state.capacity, durations),
    }


def estimated_wait_s(position: int, capacity: int | None, durations: list[float]) -> float | None:
    """How long the session at `position` should wait: a slot frees every median session
    duration / capacity on average, and `position` of them must free."""
    if not capacity or not durations:
        return None
    return round(position * statistics.median(durations) / capacity, 1)
