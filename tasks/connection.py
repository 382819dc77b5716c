"""Connecting to Redis with the JSON serializer every part must use."""

from __future__ import annotations

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings

from tasks.serialization import deserialize, serialize


def redis_settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


async def create_redis(url: str) -> ArqRedis:
    """An ArqRedis for `url` (redis://host:port/db) that writes and reads JSON jobs."""
    return await create_pool(
        redis_settings(url), job_serializer=serialize, job_deserializer=deserialize
    )


def text(value: bytes | str) -> str:
    """A Redis reply as text: the pool does not decode (job bodies are bytes)."""
    return value.decode() if isinstance(value, bytes) else value
