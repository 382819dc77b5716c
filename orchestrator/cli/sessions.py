"""The commands about events and sessions: put an event on the queue, end a session, and read
what became of them. Each returns the process exit code."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from arq import ArqRedis
from pydantic import ValidationError

from orchestrator.cli.exits import EXIT_FAILED, EXIT_OK, UsageError
from orchestrator.cli.output import Output, age_of, clock, duration
from orchestrator.settings import load_client_settings
from orchestrator.store import line, queries
from orchestrator.store.record import Session
from tasks import keys
from tasks.models import DispatchRequest, EndSessionRequest, session_id_for
from tasks.producer import enqueue_dispatch, enqueue_end_session
from tasks.validation import dotted, problems

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


MAX_SECONDS = 10 * 365 * 86400.0
"""The longest duration an option takes (ten years): more is a typo."""


def seconds(option: str, value: float | None) -> float | None:
    """A duration option's value, checked: a finite number of seconds, at most ten years
    either way."""
    if value is not None and not (math.isfinite(value) and abs(value) <= MAX_SECONDS):
        raise UsageError(f"{option} {value}: give a number of seconds, at most {MAX_SECONDS:.0f}")
    return value


def parse_since(text: str) -> int:
    """`10m`, `2h`, `1d` ago, or an ISO time, as unix ms."""
    match = _DURATION.match(text.strip())
    if match:
        ago_s = seconds("--since", float(match[1]) * _UNIT_S[match[2]])
        return int((time.time() - (ago_s or 0.0)) * 1000)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: use 90s, 10m, 2h, 1d or an ISO time") from None
    if when.tzinfo is None:
        when = when.astimezone()
    return int(when.timestamp() * 1000)


_OPTIONS = {"room": "--room", "event_id": "--event-id", "agent_name": "--agent-name"}
"""A field of an event or request by the option that sets it on the command line."""


def _pydantic_problems(
    exc: ValidationError, what: str = "event", options: frozenset[str] = frozenset(_OPTIONS)
) -> str:
    """Every problem, each named by the option that set the field (of `options`), else by
    the field."""
    named = {field: flag for field, flag in _OPTIONS.items() if field in options}
    return problems(exc, where=lambda loc: named.get(str(loc[0])) or dotted(loc), whole=what)


def _json_object(option: str, text: str) -> dict[str, Any]:
    """`text` as a JSON object, or a UsageError naming `option` and what is wrong."""
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{option}: not JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise UsageError(f"{option}: JSON nested too deep") from None
    if not isinstance(loaded, dict):
        raise UsageError(f'{option}: must be a JSON object, e.g. \'{{"user_id": "u1"}}\'')
    return loaded


def _read_event(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--event {name}: the file is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"--event {name}: cannot read it ({exc.strerror})") from None


def build_dispatch_request(args: argparse.Namespace) -> DispatchRequest:
    """The event from `--event FILE|-` (a DispatchRequest's JSON) and/or the flags."""
    data: dict[str, Any] = {}
    if args.event:
        data.update(_json_object(f"--event {args.event}", _read_event(args.event)))
    given = data.get("metadata")
    if given is not None and not isinstance(given, dict):
        raise UsageError(f"--event {args.event}: its metadata must be a JSON object")
    metadata: dict[str, Any] = dict(given or {})
    if args.metadata:
        metadata.update(_json_object("--metadata", args.metadata))
    for pair in args.meta or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--meta {pair!r}: use NAME=VALUE")
        metadata[name] = value
    for name, value in (
        ("event_id", args.event_id),
        ("room", args.room),
        ("agent_name", args.agent_name),
        ("priority", args.priority),
        ("restart_policy", args.restart_policy),
    ):
        if value is not None:
            data[name] = value
    data.setdefault("event_id", f"cli-{uuid.uuid4().hex[:16]}")
    if metadata or "metadata" in data:
        data["metadata"] = metadata
    if (expires_in_s := seconds("--expires-in-s", args.expires_in_s)) is not None:
        data["expires_at"] = (datetime.now(UTC) + timedelta(seconds=expires_in_s)).isoformat()
    if (delay_s := seconds("--delay-s", args.delay_s)) is not None:
        data["not_before"] = (datetime.now(UTC) + timedelta(seconds=delay_s)).isoformat()
    try:
        return DispatchRequest.model_validate(data)
    except ValidationError as exc:
        given = frozenset(field for field in _OPTIONS if getattr(args, field) is not None)
        raise UsageError("invalid event: " + _pydantic_problems(exc, options=given)) from None


async def cmd_dispatch(args: argparse.Namespace, out: Output, redis: ArqRedis) -> int:
    request = build_dispatch_request(args)
    job_id = keys.dispatch_job_id(request.event_id)
    known = await redis.exists(
        keys.ARQ_JOB_PREFIX + job_id,
        keys.ARQ_RESULT_PREFIX + job_id,
        keys.event_key(request.event_id),
    )
    job = await enqueue_dispatch(redis, request)
    answer: dict[str, Any] = {
        "job_id": job.job_id,
        "event_id": request.event_id,
        "session_id": session_id_for(request.event_id),
        "room": request.room,
        "enqueued": not known,
    }
    if wait_s := seconds("--wait-s", args.wait_s):
        try:
            answer["result"] = await job.result(timeout=wait_s, poll_delay=0.05)
        except TimeoutError:
            due = f", due {request.not_before.isoformat()}" if request.not_before else ""
            raise UsageError(
                f"--wait-s {wait_s:g}: no outcome yet for {job.job_id}{due}; it is queued: "
                f"wait longer, or look later with `orchestrator session {answer['session_id']}`"
            ) from None
    if out.json_mode:
        out.json(answer)
        return EXIT_OK
    if known:
        out.line(f"event {request.event_id} is already queued or handled: nothing new enqueued")
    else:
        out.line(f"enqueued {job.job_id}")
    out.fields([("session", answer["session_id"]), ("room", request.room)])
    if "result" in answer:
        result = answer["result"]
        outcome = str(result.get("outcome", "?"))
        out.fields([("outcome", out.status(outcome)), ("reason", str(result.get("reason") or ""))])
        if result.get("queue_position"):
            out.fields([("place in line", str(result["queue_position"]))])
        if result.get("session_id") and result["session_id"] != answer["session_id"]:
            out.fields([("live session", str(result["session_id"]))])
    return EXIT_OK


async def cmd_end(args: argparse.Namespace, out: Output, redis: ArqRedis) -> int:
    try:
        request = EndSessionRequest(
            session_id=args.session_id,
            room=args.room,
            delete_room=args.delete_room,
            reason=args.reason,
        )
    except ValidationError as exc:
        raise UsageError(_pydantic_problems(exc, "end")) from None
    job = await enqueue_end_session(redis, request)
    target = f"session {args.session_id}" if args.session_id else f"room {args.room}"
    if out.json_mode:
        out.json({"job_id": job.job_id, "session_id": args.session_id, "room": args.room})
    else:
        action = "delete the room" if args.delete_room else "withdraw the agent"
        out.line(f"enqueued {job.job_id}: end {target} ({action})")
    return EXIT_OK


def _time_to_dispatch(s: Session) -> str:
    if s.dispatched_at and s.enqueued_at:
        return duration((s.dispatched_at - s.enqueued_at) / 1000)
    return ""


def _session_pairs(out: Output, s: Session) -> list[tuple[str, str]]:
    return [
        ("session", s.session_id),
        ("status", out.status(s.status)),
        ("room", s.room),
        ("agent_name", s.agent_name),
        ("event", s.event_id),
        ("enqueued", clock(s.enqueued_at)),
        ("claimed", clock(s.claimed_at)),
        ("dispatched", clock(s.dispatched_at)),
        ("assigned", clock(s.assigned_at)),
        ("ended", clock(s.ended_at)),
        ("time to dispatch", _time_to_dispatch(s)),
        ("dispatch", s.dispatch_id or ""),
        ("job", s.job_id or ""),
        ("worker", s.worker_id or ""),
        ("attempts", str(s.attempts)),
        ("end reason", s.end_reason or ""),
        ("last error", out.paint(s.last_error or "", "red")),
    ]


def _view(session: Session, place: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**session.view(int(time.time() * 1000)), **(place or {})}


async def _place(redis: ArqRedis, session: Session) -> dict[str, Any]:
    """A waiting session's place in its line and estimated wait (store.line.place)."""
    client = load_client_settings()
    config = line.LineConfig(client.agent_capacity, client.agent_worker_timeout_s)
    return await line.place(redis, config, session, int(time.time() * 1000))


def _place_pairs(place: dict[str, Any]) -> list[tuple[str, str]]:
    if not place:
        return []
    wait = place.get("estimated_wait_s")
    return [
        ("place in line", str(place["queue_position"])),
        ("estimated wait", duration(wait) if wait is not None else "unknown"),
    ]


async def cmd_session(args: argparse.Namespace, out: Output, redis: ArqRedis) -> int:
    if bool(args.session_id) == bool(args.room):
        raise UsageError("give a session id or --room ROOM")
    if args.session_id:
        session = await queries.get_session(redis, args.session_id)
        what = f"session {args.session_id}"
    else:
        session = await queries.newest_in_room(redis, args.room)
        what = f"a session in room {args.room}"
    if session is None:
        if out.json_mode:
            out.json(None)
        else:
            out.error(f"no {what} (sessions are kept for LKD_SESSION_RETENTION_S)")
        return EXIT_FAILED
    place = await _place(redis, session)
    chain = await _chain(redis, session)
    if out.json_mode:
        out.json(_view(session, {**place, **chain}))
    else:
        out.fields(
            _session_pairs(out, session) + _place_pairs(place) + _chain_pairs(s=session, **chain)
        )
    return EXIT_OK


async def _chain(redis: ArqRedis, session: Session) -> dict[str, Any]:
    """Its event's sessions, first to last, when its agent or an earlier one was replaced."""
    if not (session.replaces or session.replaced_by):
        return {}
    return {"chain": await queries.chain(redis, session)}


def _chain_pairs(s: Session, chain: list[str] | None = None) -> list[tuple[str, str]]:
    if not chain:
        return []
    return [
        ("replaces", s.replaces or ""),
        ("replaced by", s.replaced_by or ""),
        ("restart", str(s.restart) if s.restart else ""),
        ("chain", " -> ".join(chain)),
    ]


async def cmd_sessions(args: argparse.Namespace, out: Output, redis: ArqRedis) -> int:
    more = 0
    if args.live:
        sessions, live = await queries.live_sessions(redis, limit=args.limit)
        more = live - len(sessions)
    else:
        sessions = await queries.list_sessions(
            redis,
            status=args.status,
            agent_name=args.agent_name,
            since_ms=parse_since(args.since) if args.since else None,
            limit=args.limit,
        )
    if out.json_mode:
        out.json([_view(s) for s in sessions])
        return EXIT_OK
    if not sessions:
        out.line("no sessions match")
        return EXIT_OK
    rows = [
        [
            s.session_id,
            out.status(s.status),
            s.room,
            s.agent_name,
            age_of(s.claimed_at),
            _time_to_dispatch(s),
            (s.last_error or s.end_reason or "")[:80],
        ]
        for s in sessions
    ]
    out.table(["SESSION", "STATUS", "ROOM", "AGENT", "AGE", "TO DISPATCH", "NOTE"], rows)
    if more:
        out.line(f"... and {more} more live sessions (--limit)")
    return EXIT_OK
