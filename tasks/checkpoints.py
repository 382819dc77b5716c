"""A session's checkpoint: what its handler saved of its progress (`SessionContext.checkpoint`),
handed to the session that replaces it should its agent die, so that a survey goes on from
question 4 rather than start again. JSON, at most MAX_CHECKPOINT_BYTES; the last one counts."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from tasks.keys import checkpoint_key
from tasks.models import MAX_CHECKPOINT_BYTES

CHECKPOINT_TTL_S = 7 * 24 * 3600
"""Kept as long as a session's record is (LKD_SESSION_RETENTION_S's default)."""


def encode_checkpoint(data: dict[str, Any]) -> str:
    """`data` as the JSON kept; ValueError saying why it cannot be (not a JSON object, or too
    big). Never quotes the values: they may be personal data."""
    if not isinstance(data, dict):
        raise ValueError(f"a checkpoint is a JSON object (a dict), not {type(data).__name__}")
    try:
        encoded = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a checkpoint must be JSON: {type(exc).__name__}") from None
    size = len(encoded.encode())
    if size > MAX_CHECKPOINT_BYTES:
        raise ValueError(
            f"the checkpoint is {size} bytes of JSON, over the {MAX_CHECKPOINT_BYTES}-byte "
            "limit: keep progress markers, not transcripts"
        )
    return encoded


async def save_checkpoint(redis: Redis, session_id: str, data: dict[str, Any]) -> None:
    await redis.set(checkpoint_key(session_id), encode_checkpoint(data), ex=CHECKPOINT_TTL_S)


async def load_checkpoint(redis: Redis, session_id: str) -> dict[str, Any] | None:
    """The session's last checkpoint, None when it saved none (or it is unreadable)."""
    raw = await redis.get(checkpoint_key(session_id))
    try:
        value = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
