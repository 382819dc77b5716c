"""JSON job and result serializer for arq: no pickle, so any language can produce jobs and a
Redis writer cannot run code in the worker.

A job is the JSON object `{"t": job_try, "f": function, "a": [args], "k": {kwargs},
"et": enqueue_time_ms}` (README: "Producing events from other languages").

A job that is not valid JSON of that shape is not dropped by arq with a pickle-style error:
the deserializer turns it into a call of `reject_malformed_job`, which records it on the
dead-letter stream with the reason, and the worker goes on.
"""

from __future__ import annotations

import json
import time
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel

from tasks.keys import REJECT_MALFORMED_JOB

MAX_RAW_KEPT_CHARS = 65_536


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


def job_body(function: str, args: list[Any], *, enqueue_ms: int) -> bytes:
    """A job as arq stores it under `arq:job:<id>` (the format other languages write too)."""
    return serialize({"t": None, "f": function, "a": args, "k": {}, "et": enqueue_ms})


def deserialize(raw: bytes) -> dict[str, Any]:
    """Parse a job or result; a malformed job becomes a `reject_malformed_job` call."""
    try:
        data = json.loads(raw)
        problem = _job_shape_problem(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        data, problem = None, f"job is not valid UTF-8 JSON ({exc})"
    if problem is None:
        assert isinstance(data, dict)
        return data
    text = raw.decode("utf-8", errors="replace")
    return {
        "t": data.get("t") if isinstance(data, dict) and isinstance(data.get("t"), int) else 1,
        "f": REJECT_MALFORMED_JOB,
        "a": [],
        "k": {"reason": problem, "raw": text[:MAX_RAW_KEPT_CHARS], "raw_bytes": len(raw)},
        "et": int(time.time() * 1000),
    }


def _job_shape_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return f"job must be a JSON object, got {type(data).__name__}"
    if "s" in data:  # a result, not a job
        return None
    for key, kind in (("f", str), ("a", list), ("k", dict), ("et", int)):
        if key not in data:
            return f"job is missing field {key!r}"
        if not isinstance(data[key], kind):
            return f"job field {key!r} must be a {_JSON_NAMES[kind]}"
    return None


_JSON_NAMES = {str: "string", list: "array", dict: "object", int: "integer"}
