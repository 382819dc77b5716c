"""`orchestrator doctor`: checks the things that, when wrong, make agents never join, each
with a verdict and, when it is not ok, the fix.

Checks: the settings load; Redis answers and persists what it is given; an orchestrator
worker is alive (arq's health-check key) and keeping up with the queue; our agent workers
and their options (from the records they write); LiveKit answers, our clock agrees with its
clock, it accepts our credentials; no running room has an agent that something else
dispatched (a token naming agents, automatic dispatch); and an agent worker accepts a real
test job for the configured agent_name (a throw-away room, deleted afterwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

import aiohttp
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from orchestrator.errors import LiveKitError
from orchestrator.gateway import LiveKitGateway
from orchestrator.gateway.strays import StrayDispatch, stray_dispatches, stray_fix
from orchestrator.settings import Settings
from orchestrator.store import line
from tasks import keys
from tasks.heartbeat import DEFAULT_PERMISSIONS, WorkerRecord, worker_records
from tasks.models import JobMetadata
from tasks.redaction import safe_url

Status = Literal["ok", "warn", "fail", "skip"]

_HEALTH_CHECK_EXPIRY_S = keys.WORKER_HEALTH_CHECK_INTERVAL_S + 1
PROBE_PREFIX = "lkd-doctor-"
"""Rooms, sessions and events of the agent probe carry this prefix."""
SKEW_WARN_S = 5.0
SKEW_FAIL_S = 60.0
"""LiveKit accepts tokens up to a minute outside their validity (its JWT leeway)."""
QUEUE_LAG_WARN_S = 30.0
AGENT_WORKER_TIMEOUT_S = Settings.model_fields["agent_worker_timeout_s"].default
"""An agent worker of ours is alive if it wrote its record this recently (the setting
LKD_AGENT_WORKER_TIMEOUT_S, when the settings load)."""
STRAY_ROOMS_CHECKED = 500
"""The stray-agent check lists the dispatches of at most this many running rooms."""


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class LiveKitClock:
    """What one plain HTTP request to LiveKit told us: it answers, and its clock."""

    server_date: str | None
    sent_s: float
    received_s: float


def settings_check(error: str | None) -> Check:
    if error is None:
        return Check("settings", "ok", "orchestrator settings load")
    return Check(
        "settings",
        "fail",
        error,
        "set the variables named above (README: Configuration); the LiveKit checks are skipped",
    )


async def redis_checks(redis: Redis, url: str) -> list[Check]:
    """Reachability, persistence (without AOF or RDB a restart loses the queue) and eviction."""
    try:
        info = await redis.info("server")
        persistence = await redis.info("persistence")
    except (RedisError, OSError) as exc:
        return [
            Check(
                "redis",
                "fail",
                f"cannot reach {safe_url(url)}: {type(exc).__name__}: {exc}",
                "start Redis, or point REDIS_URL (redis://host:6379/0) at it",
            ),
            Check("redis persistence", "skip", "Redis is unreachable"),
            Check("redis eviction", "skip", "Redis is unreachable"),
        ]
    return [*await _persistence(redis, info, persistence, url), await _eviction(redis)]


async def _eviction(redis: Redis) -> Check:
    """Evicting keys under memory pressure would silently drop jobs, claims and sessions."""
    try:
        policy = str((await redis.config_get("maxmemory-policy")).get("maxmemory-policy", ""))
    except ResponseError:
        return Check("redis eviction", "skip", "CONFIG is disabled: cannot read maxmemory-policy")
    if policy in ("", "noeviction"):
        return Check("redis eviction", "ok", "maxmemory-policy noeviction")
    return Check(
        "redis eviction",
        "warn",
        f"maxmemory-policy {policy}: when Redis is full it deletes keys, and queued events, "
        "room claims or session records can vanish",
        "set `maxmemory-policy noeviction` (writes then fail loudly instead), and give Redis "
        "the memory it needs",
    )


async def _persistence(
    redis: Redis, info: dict[str, object], persistence: dict[str, object], url: str
) -> list[Check]:
    version = info.get("redis_version") or info.get("valkey_version") or "?"
    reachable = Check("redis", "ok", f"{safe_url(url)} answers (version {version})")
    aof = str(persistence.get("aof_enabled", "0")) == "1"
    try:
        save_reply = await redis.config_get("save")
        save = str(save_reply.get("save", "")).strip()
    except ResponseError:
        save = "unknown (CONFIG is disabled)"
    if aof:
        fsync = "?"
        with contextlib.suppress(ResponseError):
            fsync = str((await redis.config_get("appendfsync")).get("appendfsync", "?"))
        return [reachable, Check("redis persistence", "ok", f"AOF on (appendfsync {fsync})")]
    if save and save != "unknown (CONFIG is disabled)":
        return [
            reachable,
            Check(
                "redis persistence",
                "warn",
                f"RDB snapshots only (save {save}): a crash loses what was queued since the "
                "last snapshot",
                "turn on AOF: `appendonly yes` in redis.conf (or CONFIG SET appendonly yes)",
            ),
        ]
    return [
        reachable,
        Check(
            "redis persistence",
            "warn",
            f"nothing persists (AOF off, RDB save {save or 'off'}): a Redis restart loses "
            "queued events, live sessions and room claims",
            "turn on AOF: `appendonly yes` in redis.conf (or CONFIG SET appendonly yes)",
        ),
    ]


async def worker_checks(
    redis: Redis,
    agent_worker_timeout_s: float = AGENT_WORKER_TIMEOUT_S,
    static_capacity: Mapping[str, int] | None = None,
) -> list[Check]:
    """An orchestrator worker checked in recently, the queue is not falling behind, which
    of our agent workers are alive, and whether any line waits for agents that are gone."""
    checks: list[Check] = []
    try:
        beat = await redis.get(keys.WORKER_HEALTH_CHECK)
        oldest = await redis.zrange(keys.QUEUE_NAME, 0, 0, withscores=True)
        depth = int(await redis.zcard(keys.QUEUE_NAME))
    except (RedisError, OSError):
        return [Check("orchestrator workers", "skip", "Redis is unreachable")]
    if beat is None:
        checks.append(
            Check(
                "orchestrator workers",
                "fail",
                f"no orchestrator worker has checked in within the last {_HEALTH_CHECK_EXPIRY_S} s",
                "start one: `arq orchestrator.WorkerSettings` with the same REDIS_URL "
                "(its log says why when it stops at start-up)",
            )
        )
    else:
        text = beat.decode(errors="replace") if isinstance(beat, bytes) else str(beat)
        stats = text.split(" ", 2)[-1]
        checks.append(Check("orchestrator workers", "ok", f"alive: {stats}"))
    checks.append(await _last_outage(redis))
    lag_s = time.time() - oldest[0][1] / 1000 if oldest else 0.0
    if depth and lag_s > QUEUE_LAG_WARN_S:
        checks.append(
            Check(
                "queue",
                "warn",
                f"{depth} jobs waiting; the oldest has been due for {lag_s:.0f} s",
                "workers are not keeping up: run more `arq orchestrator.WorkerSettings` "
                "processes, or raise LKD_MAX_JOBS",
            )
        )
    else:
        checks.append(Check("queue", "ok", f"{depth} jobs waiting"))
    checks.append(await agent_workers_check(redis, agent_worker_timeout_s))
    config = line.LineConfig(static_capacity or {}, agent_worker_timeout_s)
    checks.append(await lines_check(redis, config))
    return checks


_OPTION_WORDS = {
    "can_publish": "no publish",
    "can_subscribe": "no subscribe",
    "can_publish_data": "no data",
    "can_update_metadata": "no metadata updates",
    "hidden": "hidden",
}


async def agent_workers_check(redis: Redis, timeout_s: float) -> Check:
    """Our agent workers alive now, by agent_name: how many, their sessions against their
    limit, and the permissions they registered with LiveKit (from the records they write;
    LiveKit's server lists no workers)."""
    since_ms = int((time.time() - timeout_s) * 1000)
    try:
        records = await worker_records(redis, since_ms)
    except (RedisError, OSError):
        return Check("agent workers", "skip", "Redis is unreachable")
    if not records:
        return Check(
            "agent workers",
            "skip",
            f"none of ours wrote a record in the last {timeout_s:g} s (agents that "
            "are not `python -m agent` write none; the agent worker check below still applies)",
        )
    by_name: dict[str, list[WorkerRecord]] = {}
    for record in records:
        by_name.setdefault(record.agent_name, []).append(record)
    parts = []
    for name, group in sorted(by_name.items()):
        used = sum(len(r.sessions) for r in group)
        limit = sum(r.max_sessions for r in group)
        options = sorted(
            {
                word
                for r in group
                for key, word in _OPTION_WORDS.items()
                if r.permissions.get(key, DEFAULT_PERMISSIONS[key]) != DEFAULT_PERMISSIONS[key]
            }
            | {"a job per publisher" for r in group if r.job_type == "publisher"}
        )
        shown = f"; {', '.join(options)}" if options else ""
        parts.append(
            f"{name!r}: {len(group)} worker{'s' * (len(group) > 1)}, {used} of {limit} "
            f"sessions in use{shown}"
        )
    return Check("agent workers", "ok", "; ".join(parts))


async def lines_check(redis: Redis, config: line.LineConfig) -> Check:
    """Each agent name's waiting line against its capacity: sessions waiting while no
    worker offers a slot wait until one comes."""
    try:
        states = await line.all_lines(redis, config, int(time.time() * 1000))
    except (RedisError, OSError):
        return Check("waiting lines", "skip", "Redis is unreachable")
    if not states:
        return Check("waiting lines", "ok", "no agent name with a known capacity")
    stuck = [s for s in states if s.waiting and s.capacity == 0]
    if stuck:
        names = ", ".join(f"{s.agent_name!r} ({s.waiting} waiting)" for s in stuck)
        return Check(
            "waiting lines",
            "warn",
            f"sessions wait for agent names with no capacity: {names}; no agent worker of "
            f"theirs has beaten in the last {config.worker_timeout_s:g} s",
            "start agent workers with that AGENT_NAME (`python -m agent start`), or, for agents "
            "that are not ours, give them a limit in LKD_AGENT_CAPACITY",
        )
    shown = "; ".join(
        f"{s.agent_name!r}: {s.in_use} of "
        f"{'?' if s.capacity is None else s.capacity} slots in use, {s.waiting} waiting"
        for s in states
    )
    return Check("waiting lines", "ok", shown)


async def _last_outage(redis: Redis) -> Check:
    """The last Redis outage the workers rode out, as they recorded it."""
    try:
        record = await redis.hgetall(keys.REDIS_OUTAGE)  # type: ignore[misc]
    except (RedisError, OSError):
        return Check("redis outages", "skip", "Redis is unreachable")
    started, ended = (int(record.get(k, 0)) for k in (b"started_ms", b"ended_ms"))
    if not ended:
        return Check("redis outages", "ok", "none recorded")
    ago_s = time.time() - ended / 1000
    return Check(
        "redis outages",
        "ok",
        f"the workers rode out the last one: it lasted {(ended - started) / 1000:.0f} s and "
        f"ended {ago_s:.0f} s ago",
    )


async def read_livekit_clock(http_url: str, timeout_s: float) -> LiveKitClock:
    """One GET of LiveKit's root; raises aiohttp/OS errors when it does not answer."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        sent = time.time()
        async with http.get(http_url.rstrip("/") + "/") as response:
            received = time.time()
            return LiveKitClock(response.headers.get("Date"), sent, received)


def skew_check(clock: LiveKitClock) -> Check:
    """Compare LiveKit's `Date` (whole seconds) with the middle of our request."""
    if not clock.server_date:
        return Check("clock skew", "skip", "LiveKit's answer carried no Date header")
    server_s = parsedate_to_datetime(clock.server_date).timestamp() + 0.5
    skew = (clock.sent_s + clock.received_s) / 2 - server_s
    direction = "ahead of" if skew > 0 else "behind"
    detail = f"this machine is {abs(skew):.1f} s {direction} LiveKit"
    fix = "synchronise the clocks (NTP: `timedatectl set-ntp true` or chrony) on both machines"
    if abs(skew) <= SKEW_WARN_S:
        return Check("clock skew", "ok", detail)
    if abs(skew) <= SKEW_FAIL_S:
        return Check("clock skew", "warn", detail + " (tokens still pass, timestamps drift)", fix)
    return Check(
        "clock skew",
        "fail",
        detail + ": LiveKit rejects tokens issued that far from its clock",
        fix,
    )


async def livekit_checks(
    settings: Settings, *, agent_timeout_s: float, probe: bool, no_probe_because: str = ""
) -> list[Check]:
    """LiveKit's checks; the agent probe (a test dispatch) unless `probe` is off or
    `no_probe_because` says why it would tell nothing."""
    url = settings.http_livekit_url
    try:
        clock = await read_livekit_clock(url, settings.livekit_timeout_s)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        reason = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        return [
            Check(
                "livekit",
                "fail",
                f"cannot reach LiveKit at {url} ({reason})",
                "check LIVEKIT_URL (ws://host:7880 or wss://your.host), that the server runs "
                "and that this machine can reach it",
            ),
            Check("clock skew", "skip", "LiveKit is unreachable"),
            Check("livekit credentials", "skip", "LiveKit is unreachable"),
            Check("stray agents", "skip", "LiveKit is unreachable"),
            Check("agent worker", "skip", "LiveKit is unreachable"),
        ]
    checks = [Check("livekit", "ok", f"{url} answers"), skew_check(clock)]
    gateway = LiveKitGateway(settings)
    try:
        try:
            await gateway.check_credentials()
        except LiveKitError as exc:
            fix = (
                "LIVEKIT_API_KEY and LIVEKIT_API_SECRET must be a key pair of the server "
                "(`keys:` in livekit.yaml, or LIVEKIT_KEYS)"
            )
            if checks[1].status == "fail":
                fix += "; the clock skew above also makes valid keys fail"
            checks.append(Check("livekit credentials", "fail", str(exc), fix))
            checks.append(Check("stray agents", "skip", "LiveKit refused the credentials"))
            checks.append(Check("agent worker", "skip", "LiveKit refused the credentials"))
            return checks
        checks.append(
            Check("livekit credentials", "ok", f"key {settings.livekit_api_key!r} accepted")
        )
        checks.append(await stray_agents_check(gateway))
        if not probe:
            checks.append(Check("agent worker", "skip", "--no-probe: no test dispatch made"))
        elif no_probe_because:
            checks.append(Check("agent worker", "skip", no_probe_because))
        else:
            checks.append(await agent_probe(gateway, settings, agent_timeout_s))
    finally:
        await gateway.aclose()
    return checks


async def stray_agents_check(gateway: LiveKitGateway) -> Check:
    """Running rooms whose agent came from a dispatch we did not make."""
    try:
        rooms = await gateway.list_rooms()
    except LiveKitError as exc:
        return Check("stray agents", "warn", f"could not list the rooms: {exc}")
    checked = rooms[:STRAY_ROOMS_CHECKED]
    found: list[StrayDispatch] = []
    for room in checked:
        try:
            dispatches = await gateway.running_room_dispatches(room.name)
        except LiveKitError:
            continue  # closed since it was listed
        found += stray_dispatches(room.name, dispatches)
    of = f"{len(checked)} running rooms" + (
        f" (the first {len(checked)} of {len(rooms)})" if len(rooms) > len(checked) else ""
    )
    if not found:
        return Check("stray agents", "ok", f"every agent in {of} came from lk-dispatch")
    names = sorted({s.agent_name for s in found})
    shown = ", ".join(f"{s.room} (agent_name={s.agent_name!r})" for s in found[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    return Check(
        "stray agents",
        "warn",
        f"{len(found)} of {of} got an agent nobody dispatched through lk-dispatch: {shown}{more}",
        "; ".join(stray_fix(name) for name in names),
    )


async def agent_probe(gateway: LiveKitGateway, settings: Settings, timeout_s: float) -> Check:
    """A real dispatch for `agent_name` to a throw-away room; ok once a worker took the job."""
    name = settings.agent_name
    probe_id = PROBE_PREFIX + uuid.uuid4().hex[:12]
    room = probe_id
    # Marked as a probe, the job is taken and ended by the agent without a session report.
    metadata = JobMetadata(session_id=probe_id, event_id=probe_id, probe=True).to_json()
    started = time.monotonic()
    dispatch_id = ""
    try:
        dispatch = await gateway.create_dispatch(name, room, metadata)
        dispatch_id = dispatch.id
        while time.monotonic() - started < timeout_s:
            for d in await gateway.room_dispatches(room):
                if d.id == dispatch_id and d.state.jobs:
                    job = d.state.jobs[0]
                    waited = time.monotonic() - started
                    return Check(
                        "agent worker",
                        "ok",
                        f"a worker took a test job for agent_name={name!r} in {waited:.1f} s "
                        f"(worker {job.state.worker_id or '?'})",
                    )
            await asyncio.sleep(0.25)
        return Check(
            "agent worker",
            "fail",
            f"no agent worker accepted a test job for agent_name={name!r} within "
            f"{timeout_s:g} s: LiveKit dropped it",
            f"start one with AGENT_NAME={name} (`python -m agent start`); its log line "
            "'registered with LiveKit' must show that agent_name. If workers run, they are "
            "full (load over the server's agents.target_load) or answer job requests too late",
        )
    except LiveKitError as exc:
        return Check("agent worker", "fail", f"the test dispatch failed: {exc}", "see the message")
    finally:
        if dispatch_id:
            await _quietly(gateway.delete_dispatch(dispatch_id, room))
        await _quietly(gateway.delete_room(room))


async def _publisher_workers(redis: Redis, settings: Settings) -> str:
    """Why the agent probe would tell nothing: the default agent name's workers take a job
    per publisher, and a test room has nobody publishing ("" when they do not)."""
    since_ms = int((time.time() - settings.agent_worker_timeout_s) * 1000)
    try:
        records = await worker_records(redis, since_ms)
    except (RedisError, OSError):
        return ""
    named = [r for r in records if r.agent_name == settings.agent_name]
    if named and all(r.job_type == "publisher" for r in named):
        return (
            f"the workers of agent_name={settings.agent_name!r} take a job per publisher "
            "(AGENT_JOB_TYPE=publisher): a test room, where nobody publishes, starts no job"
        )
    return ""


async def _quietly(call: Awaitable[object]) -> None:
    with contextlib.suppress(LiveKitError):
        await call


async def run_checks(
    redis_url: str,
    settings: Settings | None,
    *,
    settings_error: str | None = None,
    agent_timeout_s: float = 10.0,
    probe: bool = True,
) -> list[Check]:
    """Every check, in the order a person would fix them."""
    checks = [settings_check(settings_error)]
    redis: Redis = Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=5)
    try:
        checks += await redis_checks(redis, redis_url)
        reachable = next(c for c in checks if c.name == "redis").status == "ok"
        checks += (
            await worker_checks(
                redis,
                settings.agent_worker_timeout_s if settings else AGENT_WORKER_TIMEOUT_S,
                settings.agent_capacity if settings else None,
            )
            if reachable
            else [Check("orchestrator workers", "skip", "Redis is unreachable")]
        )
        if settings is None:
            checks.append(Check("livekit", "skip", "settings incomplete"))
        else:
            checks += await livekit_checks(
                settings,
                agent_timeout_s=agent_timeout_s,
                probe=probe,
                no_probe_because=await _publisher_workers(redis, settings) if reachable else "",
            )
    finally:
        await redis.aclose()
    return checks
