"""The worker's Redis connection rides out an outage, inside a watched transaction too (where
arq starts jobs), and tells of the outage once."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from redis.asyncio import Redis
from redis.exceptions import WatchError

from orchestrator.demo.local_redis import LocalRedis
from orchestrator.store.connections import Outage, worker_pool
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

UNREACHABLE = "Redis is unreachable; waiting for it, work resumes when it answers"


@pytest.fixture
def outage() -> Outage:
    """A view of outages of the test's own (a worker process has one)."""
    return Outage()


async def restart_soon(server: LocalRedis) -> None:
    await asyncio.sleep(0.5)  # the fault: Redis stays away this long
    await asyncio.to_thread(server.start)


async def test_a_watched_transaction_goes_on_after_redis_comes_back(
    own_redis: LocalRedis, outage: Outage
) -> None:
    pool = worker_pool(own_redis.url, outage)
    try:
        async with pool.pipeline(transaction=True) as pipe:
            await pipe.watch("lkd:test:watched")
            own_redis.stop()
            restarting = asyncio.create_task(restart_soon(own_redis))
            # As arq does between WATCH and MULTI: a read on the watched connection.
            assert await pipe.exists("lkd:test:watched") == 0
            await restarting
            pipe.multi()
            pipe.set("lkd:test:watched", "1")
            assert await pipe.execute() == [True]
        assert await pool.get("lkd:test:watched") == b"1"
        assert outage.last is not None
    finally:
        await pool.aclose()


async def test_the_watch_is_kept_across_the_reconnection(
    own_redis: LocalRedis, outage: Outage
) -> None:
    pool = worker_pool(own_redis.url, outage)
    other = Redis.from_url(own_redis.url)
    try:
        async with pool.pipeline(transaction=True) as pipe:
            await pipe.watch("lkd:test:raced")
            own_redis.stop()
            restarting = asyncio.create_task(restart_soon(own_redis))
            assert await pipe.exists("lkd:test:raced") == 0
            await restarting
            await other.set("lkd:test:raced", "someone else")  # after the WATCH was renewed
            pipe.multi()
            pipe.set("lkd:test:raced", "mine")
            with pytest.raises(WatchError):
                await pipe.execute()
        assert await pool.get("lkd:test:raced") == b"someone else"
    finally:
        await other.aclose()
        await pool.aclose()


async def test_an_outage_is_told_once_when_it_begins_and_once_when_it_ends(
    own_redis: LocalRedis, outage: Outage
) -> None:
    ended: list[tuple[float, float]] = []

    async def record(started: float, end: float) -> None:
        ended.append((started, end))

    outage.on_end = record
    pool = worker_pool(own_redis.url, outage)
    try:
        await pool.ping()
        own_redis.stop()
        restarting = asyncio.create_task(restart_soon(own_redis))
        with structlog.testing.capture_logs() as logs:
            # Many callers meet the outage at once, each waiting for Redis.
            assert await asyncio.gather(*(pool.ping() for _ in range(20))) == [True] * 20
        await restarting
        await eventually(lambda: ended, what="the end told")  # in a task of its own
        events = [entry["event"] for entry in logs]
        assert (
            events.count("Redis is unreachable; waiting for it, work resumes when it answers") == 1
        )
        assert events.count("Redis answers again") == 1
        [(started, end)] = ended
        assert end - started >= 0.4
    finally:
        await pool.aclose()
