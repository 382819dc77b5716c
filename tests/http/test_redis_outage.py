"""The HTTP service while Redis is away: its health says so, and how long for; it answers
again once Redis is back. This module's tests have a Redis of their own, which they stop."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest

from orchestrator.demo.local_redis import LocalRedis
from tests.http.test_api import call
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis(appendonly=True) as server:
        yield server


async def test_health_says_how_long_redis_has_been_away(
    anonymous: aiohttp.ClientSession, redis_server: LocalRedis
) -> None:
    redis_server.stop()

    status, body = await call(anonymous, "GET", "/healthz")
    assert status == 503
    assert body["failing"] == ["redis", "worker"]
    detail = body["checks"]["redis"]["detail"]
    assert detail.startswith("Redis unreachable at REDIS_URL for 0 s")
    assert "the workers wait for it and resume when it answers" in detail
    status, body = await call(anonymous, "GET", "/readyz")
    assert (status, body["failing"]) == (503, ["redis"])

    redis_server.start()

    async def ready() -> bool:
        status, _ = await call(anonymous, "GET", "/readyz")
        return status == 200

    await eventually(ready, what="ready again")
    _, body = await call(anonymous, "GET", "/healthz")
    assert body["checks"]["redis"] == {"ok": True, "detail": "PING answered"}
