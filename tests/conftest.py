"""Shared fixtures: one real Redis server per test session, flushed before each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from orchestrator.demo.local_redis import LocalRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest.fixture
async def redis(redis_server: LocalRedis) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()
