"""Lua scripts of concurrent callers share round trips, and each caller still gets its own
answer or error, through a lost script cache and a dropped connection."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq import ArqRedis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError, ResponseError

from orchestrator.script_batch import ScriptBatcher, _resp
from tests.support.waiting import eventually

INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAIL_ON_NEGATIVE = """
if tonumber(ARGV[1]) < 0 then return redis.error_reply('negative: ' .. ARGV[1]) end
return ARGV[1]
"""


@pytest.fixture
async def batcher(arq_redis: ArqRedis) -> AsyncIterator[ScriptBatcher]:
    scripts = ScriptBatcher(arq_redis)
    yield scripts
    await scripts.aclose()


def count_round_trips(batcher: ScriptBatcher, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the number of commands of each round trip the batcher makes."""
    trips: list[int] = []
    exchange = batcher._exchange

    async def counted(commands: list[tuple[object, ...]]) -> list[object]:
        trips.append(len(commands))
        return await exchange(commands)

    monkeypatch.setattr(batcher, "_exchange", counted)
    return trips


async def test_concurrent_calls_share_round_trips_and_get_their_own_replies(
    batcher: ScriptBatcher, arq_redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = batcher.script(INCR_BY)
    await batcher.run(script, ["warm-up"], [1])  # the server learns the script
    trips = count_round_trips(batcher, monkeypatch)
    replies = await asyncio.gather(
        *(batcher.run(script, [f"counter-{i % 7}"], [i]) for i in range(100))
    )
    assert sum(trips) == 100
    assert len(trips) <= 2
    # Each caller got the counter value its own INCRBY produced: replies of the same counter
    # rise by exactly the caller's increment.
    for counter in range(7):
        mine = [(i, replies[i]) for i in range(100) if i % 7 == counter]
        assert all(b[1] - a[1] == b[0] for a, b in itertools.pairwise(mine))
        assert int(await arq_redis.get(f"counter-{counter}")) == sum(i for i, _ in mine)


async def test_a_failing_script_fails_only_its_caller(batcher: ScriptBatcher) -> None:
    script = batcher.script(FAIL_ON_NEGATIVE)
    results = await asyncio.gather(
        *(batcher.run(script, [], [n]) for n in (1, -2, 3)), return_exceptions=True
    )
    assert results[0] == b"1"
    assert isinstance(results[1], ResponseError)
    assert "negative: -2" in str(results[1])
    assert results[2] == b"3"


async def test_scripts_run_after_the_server_lost_its_script_cache(
    batcher: ScriptBatcher, arq_redis: ArqRedis
) -> None:
    script = batcher.script(INCR_BY)
    assert await batcher.run(script, ["k"], [1]) == 1
    await arq_redis.script_flush()
    replies = await asyncio.gather(*(batcher.run(script, ["k"], [1]) for _ in range(3)))
    assert sorted(replies) == [2, 3, 4]


async def test_a_dropped_connection_fails_the_batch_in_flight_and_the_next_one_reconnects(
    batcher: ScriptBatcher,
    arq_redis: ArqRedis,
) -> None:
    script = batcher.script(INCR_BY)
    assert await batcher.run(script, ["k"], [1]) == 1
    await arq_redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    with pytest.raises(ConnectionError):
        await batcher.run(script, ["k"], [1])
    assert await batcher.run(script, ["k"], [1]) == 2


async def test_a_lingering_call_goes_with_the_next_urgent_one_or_alone_in_time(
    batcher: ScriptBatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = batcher.script(INCR_BY)
    await batcher.run(script, ["warm-up"], [1])
    trips = count_round_trips(batcher, monkeypatch)
    # Lingering for a minute, it goes as soon as a call that cannot wait comes.
    lingering = asyncio.ensure_future(batcher.run(script, ["a"], [1], linger_s=60))
    await eventually(lambda: batcher._hurry is not None, what="the call lingering")
    assert not lingering.done()
    assert await batcher.run(script, ["b"], [1]) == 1
    assert await lingering == 1
    assert trips == [2]
    # Alone, it goes when its linger is over.
    assert await batcher.run(script, ["a"], [1], linger_s=0.01) == 2
    assert trips == [2, 1]


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    commands: list[tuple[Any, ...]] = [
        ("EVALSHA", "0" * 40, 2, "lkd:room:r1", "ünïcode", 0, -7, 2.5, 1_779_000_000_123),
        ("SCRIPT", "LOAD", b"return 1\x00\xff"),
    ]
    assert _resp(commands) == b"".join(Connection().pack_commands(commands))
    with pytest.raises(TypeError, match="cannot send NoneType"):
        _resp([("EVALSHA", None)])
