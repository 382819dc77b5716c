"""JSON job and result serializer for arq: no pickle, so any language can produce jobs and a
Redis writer cannot run code in the worker.

A job is the JSON object `{"t": job_try, "f": function, "a": [args], "k": {kwargs},
"et": enqueue_time_ms}` (README: "Producing events from other languages").

Whatever bytes a job key holds, the worker goes on: every field arq reads is checked here, its
type and range, and the arguments against the function's, before arq sees them. A job that
is not valid JSON of that shape is not handed to arq to fail on: the deserializer turns it
into a call of `reject_malformed_job`, which records it on the dead-letter stream with the
reason, and the worker goes on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel

from tasks.keys import (
    AGENT_EXITED,
    CONFIRM_ASSIGNMENT,
    DISPATCH_AGENT,
    DISPATCH_FROM_LINE,
    END_SESSION,
    MOVE_LINE,
    RECONCILE_SESSIONS,
    REJECT_MALFORMED_JOB,
    SESSION_REPORT,
    WORKER_GONE,
)

MAX_RAW_KEPT_CHARS = 65_536
MIN_ENQUEUE_MS = 946_684_800_000  # 2000-01-01
MAX_ENQUEUE_MS = 32_503_680_000_000  # 3000-01-01
MAX_FIRST_TRY = 1
"""A new job starts at try 0 or 1 (or null): arq counts the tries itself."""


@dataclass(frozen=True)
class Arguments:
    """What a job function takes after arq's context: its positional parameters (the first
    `required` of them required) and the keywords it accepts."""

    positional: tuple[str, ...]
    required: int
    keywords: frozenset[str] = frozenset()

    def problem(self, function: str, args: list[Any], kwargs: dict[str, Any]) -> str | None:
        given = self.positional[: len(args)]
        if not self.required <= len(args) <= len(self.positional):
            wanted = ", ".join(self.positional) or "nothing"
            return (
                f"{function} takes {_count(self.required, len(self.positional))} "
                f"({wanted}), got {len(args)}"
            )
        unknown = sorted(set(kwargs) - self.keywords)
        if unknown:
            return f"{function} takes no keyword argument {unknown[0]!r}"
        twice = sorted(set(kwargs) & set(given))
        if twice:
            return f"{function} got {twice[0]!r} both by position and by keyword"
        return None


def _count(low: int, high: int) -> str:
    if low == high:
        return f"{low} argument{'s' if low != 1 else ''}"
    return f"{low} to {high} arguments"


FUNCTIONS = {
    DISPATCH_AGENT: Arguments(("event", "generation"), 1, frozenset({"generation"})),
    END_SESSION: Arguments(("request",), 1),
    SESSION_REPORT: Arguments(("report",), 1),
    CONFIRM_ASSIGNMENT: Arguments(("session_id", "dispatch_id", "attempt"), 3),
    RECONCILE_SESSIONS: Arguments((), 0),
    DISPATCH_FROM_LINE: Arguments(("session_id",), 1),
    MOVE_LINE: Arguments(("agent_name",), 1),
    AGENT_EXITED: Arguments(("session_id", "job_id"), 2),
    WORKER_GONE: Arguments(("instance", "last_beat_ms"), 2),
    REJECT_MALFORMED_JOB: Arguments((), 0, frozenset({"reason", "raw", "raw_bytes"})),
}
"""Every job function a worker runs, with its arguments."""


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, BaseException):
        return {"error": type(value).__name__, "message": str(value)}
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# Built once: json.dumps with options builds an encoder per call, a third of its time here.
_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"))


def serialize(data: dict[str, Any]) -> bytes:
    return _ENCODER.encode(data).encode()


def job_body(
    function: str, args: list[Any], *, enqueue_ms: int, kwargs: dict[str, Any] | None = None
) -> bytes:
    """A job as arq stores it under `arq:job:<id>` (the format other languages write too)."""
    return serialize({"t": None, "f": function, "a": args, "k": kwargs or {}, "et": enqueue_ms})


def deserialize(raw: bytes) -> dict[str, Any]:
    """Parse a job or result; a malformed job becomes a `reject_malformed_job` call."""
    data: Any = None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem: str | None = f"job is not valid UTF-8 JSON ({exc})"
    except RecursionError:
        problem = "job is JSON nested too deep to read"
    else:
        problem = None if _is_result(data) else _job_problem(data)
    if problem is None:
        assert isinstance(data, dict)
        return data
    text = raw.decode("utf-8", errors="replace")
    return {
        "t": None,
        "f": REJECT_MALFORMED_JOB,
        "a": [],
        "k": {"reason": problem, "raw": text[:MAX_RAW_KEPT_CHARS], "raw_bytes": len(raw)},
        "et": int(time.time() * 1000),
    }


def _is_result(data: Any) -> bool:
    """Whether `data` is a job's result as arq writes it (with this serializer): what a job
    carries, and how it went (`s`, `r`, start and finish times)."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("s"), bool)
        and "r" in data
        and isinstance(data.get("f"), str)
        and isinstance(data.get("a"), list)
        and isinstance(data.get("k"), dict)
        and (data.get("t") is None or _integer(data.get("t"), 0, 2**31))
        and all(_integer(data.get(k), MIN_ENQUEUE_MS, MAX_ENQUEUE_MS) for k in ("et", "st", "ft"))
    )


def _job_problem(data: Any) -> str | None:
    """What is wrong with a job, for the person who sent it; None when arq can run it."""
    if not isinstance(data, dict):
        return f"job must be a JSON object, got {_json_name(data)}"
    for key, kind in (("f", str), ("a", list), ("k", dict), ("et", int)):
        if key not in data:
            return f"job is missing field {key!r}"
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            return f"job field {key!r} must be {_JSON_NAMES[kind]}, got {_json_name(data[key])}"
    if not _integer(data["et"], MIN_ENQUEUE_MS, MAX_ENQUEUE_MS):
        return "job field 'et' must be the enqueue time in unix milliseconds"
    tried = data.get("t")
    if tried is not None and not _integer(tried, 0, MAX_FIRST_TRY):
        return f"job field 't' must be null or an integer from 0 to {MAX_FIRST_TRY}"
    arguments = FUNCTIONS.get(data["f"])
    if arguments is None:
        known = ", ".join(sorted(f for f in FUNCTIONS if f != REJECT_MALFORMED_JOB))
        return f"job field 'f' names no job function (known: {known})"
    return arguments.problem(data["f"], data["a"], data["k"])


def _integer(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in _JSON_NAMES.items():
        if isinstance(value, kind):
            return name
    return "a number"


_JSON_NAMES: dict[type, str] = {
    str: "a string",
    list: "an array",
    dict: "an object",
    int: "an integer",
}
