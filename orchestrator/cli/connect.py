"""Opening the command line's Redis connection, failing fast with a message that says where
it looked (without the password)."""

from __future__ import annotations

import dataclasses

from arq import ArqRedis, create_pool
from redis.exceptions import RedisError

from orchestrator.errors import OrchestratorError
from tasks.connection import redis_settings
from tasks.redaction import safe_url
from tasks.serialization import deserialize, serialize


class RedisUnreachable(OrchestratorError):
    """Redis could not be reached; the message names the URL (password hidden) and REDIS_URL."""


async def open_redis(url: str, *, timeout_s: float = 3.0) -> ArqRedis:
    """An ArqRedis speaking the JSON job format, connected once (no retry loop: a person is
    waiting)."""
    try:
        parsed = redis_settings(url)
    except ValueError as exc:
        raise RedisUnreachable(f"{exc} (REDIS_URL is {safe_url(url)})") from None
    settings = dataclasses.replace(parsed, conn_timeout=max(1, int(timeout_s)), conn_retries=0)
    try:
        redis = await create_pool(
            settings, job_serializer=serialize, job_deserializer=deserialize, retry=0
        )
        await redis.ping()
    except (RedisError, OSError) as exc:
        raise RedisUnreachable(
            f"cannot reach Redis at {safe_url(url)} ({type(exc).__name__}: {exc}): "
            "is it running, and is REDIS_URL right?"
        ) from None
    return redis
