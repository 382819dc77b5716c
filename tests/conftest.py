"""Shared fixtures: one real Redis server per test session, flushed before each test; one
LiveKit stand-in factory; and the rule that every test module names its category."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from tests.support.sim import MakeSim, running_sim

# What a test needs, from least to most; `make test-fast` runs the first two.
CATEGORIES = {
    "unit": "no server: pure code, parsed files",
    "integration": "a real Redis and/or the LiveKit stand-in, all inside the test process",
    "system": "processes of ours: orchestrator and agent workers, the CLI, the demo, a browser",
    "media": "WebRTC audio between the stand-in and the real rtc SDK, in a network namespace",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, what in CATEGORIES.items():
        config.addinivalue_line("markers", f"{name}: {what}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test module carries exactly one category marker (`pytestmark`), so that the quick
    loop cannot silently lose or gain a slow module."""
    wrong: set[str] = set()
    for item in items:
        found = [m.name for m in item.iter_markers() if m.name in CATEGORIES]
        if len(found) != 1:
            wrong.add(f"{item.path.name}: {found or 'none'}")
    if wrong:
        raise pytest.UsageError(
            "each test module needs exactly one of the markers "
            f"{', '.join(CATEGORIES)} in its pytestmark: " + "; ".join(sorted(wrong))
        )


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


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    """`await make_sim(**knobs)`: a LiveKit stand-in on a free port with the suite's
    credentials, stopped when the test ends. Module-scoped fixtures use `running_sim`."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**knobs: object) -> LiveKitSim:
            return await stack.enter_async_context(running_sim(**knobs))

        yield make
