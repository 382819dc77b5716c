"""Lua scripts of concurrent callers share writes on one pipelined connection, and each
caller still gets its own answer or error, through a lost script cache, a dropped
connection, an authenticated connection to another database, and the pool's close."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from arq import ArqRedis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError, ResponseError

from orchestrator.demo.local_redis import LocalRedis
from orchestrator.store.script_pipe import ScriptPipe, _resp
from tests.support.tls import self_signed, tls_front
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


class Kind(enum.StrEnum):
    ROOM = "room"


class Level(enum.IntEnum):
    HIGH = 3


INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAIL_ON_NEGATIVE = """
if tonumber(ARGV[1]) < 0 then return redis.error_reply('negative: ' .. ARGV[1]) end
return ARGV[1]
"""


@pytest.fixture
async def pipe(arq_redis: ArqRedis) -> AsyncIterator[ScriptPipe]:
    scripts = ScriptPipe(arq_redis)
    yield scripts
    await scripts.aclose()


class _CountingTransport:
    """Stands in front of the pipe's transport and counts the scripts of each write."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes: list[int] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data.count(b"\r\nEVAL"))
        self._transport.write(data)

    def close(self) -> None:
        self._transport.close()


def count_writes(pipe: ScriptPipe) -> list[int]:
    """From now on, the number of scripts in each write the pipe makes (it is connected)."""
    counting = _CountingTransport(pipe._transport)
    pipe._transport = counting  # type: ignore[assignment]
    return counting.writes


async def test_calls_of_one_turn_go_in_one_write_and_get_their_own_replies(
    pipe: ScriptPipe, arq_redis: ArqRedis
) -> None:
    script = pipe.script(INCR_BY)
    await pipe.run(script, ["warm-up"], [1])  # connected, and the server knows the script
    writes = count_writes(pipe)
    replies = await asyncio.gather(
        *(pipe.run(script, [f"counter-{i % 7}"], [i]) for i in range(100))
    )
    assert writes == [100]
    # Each caller got the counter value its own INCRBY produced: replies of the same counter
    # rise by exactly the caller's increment.
    for counter in range(7):
        mine = [(i, replies[i]) for i in range(100) if i % 7 == counter]
        assert all(b[1] - a[1] == b[0] for a, b in itertools.pairwise(mine))
        assert int(await arq_redis.get(f"counter-{counter}")) == sum(i for i, _ in mine)


@contextlib.asynccontextmanager
async def writes_held(redis: ArqRedis) -> AsyncIterator[None]:
    """Redis holds scripts (they may write) while clients are paused for writes: calls sent
    meanwhile stay in flight, unanswered."""
    await redis.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    try:
        yield
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")


async def test_calls_do_not_wait_for_the_replies_in_flight(
    pipe: ScriptPipe, arq_redis: ArqRedis
) -> None:
    script = pipe.script(INCR_BY)
    await pipe.run(script, ["warm-up"], [1])
    writes = count_writes(pipe)
    async with writes_held(arq_redis):
        first = asyncio.ensure_future(pipe.run(script, ["k"], [1]))
        await eventually(lambda: writes == [1], what="the first call written")
        second = asyncio.ensure_future(pipe.run(script, ["k"], [1]))
        await eventually(lambda: writes == [1, 1], what="the second call written")
        assert not first.done()  # the second went while the first awaited its reply
    assert sorted([await first, await second]) == [1, 2]


async def test_a_failing_script_fails_only_its_caller(pipe: ScriptPipe) -> None:
    script = pipe.script(FAIL_ON_NEGATIVE)
    results = await asyncio.gather(
        *(pipe.run(script, [], [n]) for n in (1, -2, 3)), return_exceptions=True
    )
    assert results[0] == b"1"
    assert isinstance(results[1], ResponseError)
    assert "negative: -2" in str(results[1])
    assert results[2] == b"3"


async def test_an_argument_redis_cannot_take_fails_its_caller_at_once(pipe: ScriptPipe) -> None:
    script = pipe.script(INCR_BY)
    with pytest.raises(TypeError, match="cannot send NoneType"):
        await pipe.run(script, ["k"], [None])
    assert await pipe.run(script, ["k"], [1]) == 1


async def test_known_and_unknown_scripts_mixed_each_answer_their_own_caller(
    pipe: ScriptPipe, arq_redis: ArqRedis
) -> None:
    incr, echo = pipe.script(INCR_BY), pipe.script(FAIL_ON_NEGATIVE)
    await arq_redis.script_flush()  # the server's script cache outlives tests
    assert await pipe.run(incr, ["k"], [1]) == 1  # the server knows this one, not the other
    assert await arq_redis.script_exists(echo.sha) == [False]
    replies = await asyncio.gather(
        pipe.run(echo, [], [5]), pipe.run(incr, ["k"], [1]),
        pipe.run(echo, [], [7]), pipe.run(incr, ["k"], [1]),
    )  # fmt: skip
    assert (replies[0], replies[2]) == (b"5", b"7")
    assert sorted(replies[1::2]) == [2, 3]


async def test_an_error_that_only_looks_like_a_lost_script_is_not_sent_again_and_again(
    pipe: ScriptPipe,
) -> None:
    pretender = pipe.script("return redis.error_reply('NOSCRIPT pretend: ' .. ARGV[1])")
    with pytest.raises(ResponseError, match="NOSCRIPT pretend: 1"):
        await asyncio.wait_for(pipe.run(pretender, [], [1]), timeout=5)
    assert await pipe.run(pipe.script(INCR_BY), ["k"], [1]) == 1


async def test_a_cancelled_caller_leaves_the_replies_of_the_others_in_step(
    pipe: ScriptPipe, arq_redis: ArqRedis
) -> None:
    script = pipe.script(INCR_BY)
    await pipe.run(script, ["warm-up"], [1])
    async with writes_held(arq_redis):
        given_up = asyncio.ensure_future(pipe.run(script, ["gone"], [1]))
        await eventually(lambda: len(pipe._sent) == 1, what="the call in flight")
        given_up.cancel()
        others = [asyncio.ensure_future(pipe.run(script, [f"k{i}"], [i])) for i in (1, 2)]
        await eventually(lambda: len(pipe._sent) == 3, what="the others in flight")
    assert [await call for call in others] == [1, 2]
    assert int(await arq_redis.get("gone")) == 1  # it ran; its reply was dropped


async def test_scripts_run_after_the_server_lost_its_script_cache(
    pipe: ScriptPipe, arq_redis: ArqRedis
) -> None:
    script = pipe.script(INCR_BY)
    assert await pipe.run(script, ["k"], [1]) == 1
    await arq_redis.script_flush()
    replies = await asyncio.gather(*(pipe.run(script, ["k"], [1]) for _ in range(3)))
    assert sorted(replies) == [2, 3, 4]
    assert await arq_redis.script_exists(script.sha) == [True]


async def test_a_dropped_connection_fails_the_calls_in_flight_and_the_next_one_reconnects(
    pipe: ScriptPipe, arq_redis: ArqRedis
) -> None:
    script = pipe.script(INCR_BY)
    assert await pipe.run(script, ["k"], [1]) == 1
    async with writes_held(arq_redis):
        in_flight = asyncio.ensure_future(pipe.run(script, ["k"], [1]))
        await eventually(lambda: len(pipe._sent) == 1, what="the call in flight")
        await arq_redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        with pytest.raises(ConnectionError, match="lost before the script's reply"):
            await in_flight
    assert await pipe.run(script, ["k"], [1]) == 2


async def test_a_call_not_yet_sent_when_the_connection_drops_goes_on_a_new_one(
    pipe: ScriptPipe, arq_redis: ArqRedis
) -> None:
    script = pipe.script(INCR_BY)
    assert await pipe.run(script, ["k"], [1]) == 1
    lingering = asyncio.ensure_future(pipe.run(script, ["k"], [1], linger_s=2.0))
    await eventually(lambda: pipe._unsent, what="the call lingering")
    await arq_redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await eventually(lambda: pipe._transport is None, what="the connection lost")
    assert not lingering.done()
    assert await lingering == 2


async def test_a_lingering_call_goes_with_the_next_urgent_one_or_alone_in_time(
    pipe: ScriptPipe,
) -> None:
    script = pipe.script(INCR_BY)
    await pipe.run(script, ["warm-up"], [1])
    writes = count_writes(pipe)
    # Lingering for a minute, it goes as soon as a call that cannot wait comes.
    lingering = asyncio.ensure_future(pipe.run(script, ["a"], [1], linger_s=60))
    await eventually(lambda: pipe._flush is not None, what="the call lingering")
    assert not lingering.done()
    assert await pipe.run(script, ["b"], [1]) == 1
    assert await lingering == 1
    assert writes == [2]
    # Alone, it goes when its linger is over.
    assert await pipe.run(script, ["a"], [1], linger_s=0.01) == 2
    assert writes == [2, 1]


async def test_close_answers_the_calls_made_and_gives_the_connection_back(
    arq_redis: ArqRedis,
) -> None:
    pipe = ScriptPipe(arq_redis)
    script = pipe.script(INCR_BY)
    calls = [asyncio.ensure_future(pipe.run(script, ["k"], [1], linger_s=60)) for _ in range(3)]
    await eventually(lambda: pipe._flush is not None, what="the calls lingering")
    await pipe.aclose()
    assert sorted(call.result() for call in calls) == [1, 2, 3]
    assert not arq_redis.connection_pool._in_use_connections


async def test_close_while_connecting_answers_the_call(arq_redis: ArqRedis) -> None:
    pipe = ScriptPipe(arq_redis)
    call = asyncio.ensure_future(pipe.run(pipe.script(INCR_BY), ["k"], [1]))
    for _ in range(10):  # a few turns of the loop: the call is made, the connect begins
        if pipe._connecting is not None:
            break
        await asyncio.sleep(0)
    assert pipe._connecting is not None
    assert not pipe._connecting.done()
    await pipe.aclose()
    assert call.result() == 1
    assert not arq_redis.connection_pool._in_use_connections
    with pytest.raises(ConnectionError, match="closed"):
        await pipe.run(pipe.script(INCR_BY), ["k"], [1])


async def test_close_gives_up_on_a_redis_that_does_not_answer(arq_redis: ArqRedis) -> None:
    pipe = ScriptPipe(arq_redis)
    script = pipe.script(INCR_BY)
    await pipe.run(script, ["k"], [1])
    async with writes_held(arq_redis):
        unanswered = asyncio.ensure_future(pipe.run(script, ["k"], [1]))
        await eventually(lambda: len(pipe._sent) == 1, what="the call in flight")
        await asyncio.wait_for(pipe.aclose(timeout_s=0.2), timeout=5)
        with pytest.raises(ConnectionError):
            await unanswered
    assert not arq_redis.connection_pool._in_use_connections


async def test_closing_the_pool_closes_the_pipe_connection(redis_server: LocalRedis) -> None:
    client = ArqRedis.from_url(redis_server.url)
    pipe = ScriptPipe(client)
    script = pipe.script(INCR_BY)
    assert await pipe.run(script, ["pool-close"], [1]) == 1
    await asyncio.wait_for(client.aclose(), timeout=5)
    await eventually(lambda: pipe._transport is None, what="the pipe's connection closed")


async def test_an_authenticated_connection_to_another_database(
    redis_server: LocalRedis, arq_redis: ArqRedis
) -> None:
    await arq_redis.execute_command(
        "ACL", "SETUSER", "pipe-user", "on", ">pipe-secret", "~*", "&*", "+@all"
    )
    url = f"redis://pipe-user:pipe-secret@127.0.0.1:{redis_server.port}/3"
    client = ArqRedis.from_url(url)
    pipe = ScriptPipe(client)
    in_db_3: Redis = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/3")
    try:
        assert await pipe.run(pipe.script(INCR_BY), ["in-db-3"], [5]) == 5
        assert await in_db_3.get("in-db-3") == b"5"
        assert await arq_redis.get("in-db-3") is None  # not database 0
        await in_db_3.flushdb()
    finally:
        await in_db_3.aclose()
        await pipe.aclose()
        await client.aclose()
        await arq_redis.execute_command("ACL", "DELUSER", "pipe-user")


REPEAT = "return string.rep(ARGV[1], tonumber(ARGV[2]))"


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_scripts_run_over_tls(
    run: Callable[[Coroutine[Any, Any, None]], None], redis_server: LocalRedis, tmp_path: Path
) -> None:
    """`rediss://`: the pipe reads the TLS transport redis-py connected, under the worker's
    event loop (uvloop) and asyncio's."""
    server_tls, _ = self_signed(tmp_path, "127.0.0.1")

    async def scripts_over_tls() -> None:
        async with tls_front(redis_server.port, server_tls) as port:
            client: Redis = Redis.from_url(
                f"rediss://127.0.0.1:{port}/0",
                ssl_ca_certs=str(tmp_path / "cert.pem"),
                ssl_check_hostname=True,
            )
            pipe = ScriptPipe(client)
            try:
                await client.flushall()
                script = pipe.script(INCR_BY)
                assert await pipe.run(script, ["k"], [1]) == 1
                assert pipe._transport is not None
                assert pipe._transport.get_extra_info("ssl_object") is not None
                writes = count_writes(pipe)
                replies = await asyncio.gather(*(pipe.run(script, ["k"], [1]) for _ in range(50)))
                assert sorted(replies) == list(range(2, 52))
                assert writes == [50]
                await client.script_flush()  # NOSCRIPT: each call goes again as EVAL
                replies = await asyncio.gather(*(pipe.run(script, ["k"], [1]) for _ in range(3)))
                assert sorted(replies) == [52, 53, 54]
                # A reply longer than many TLS records comes whole.
                long = await pipe.run(pipe.script(REPEAT), [], ["0123456789", 50_000])
                assert long == b"0123456789" * 50_000
            finally:
                await pipe.aclose()
                await client.aclose()

    run(scripts_over_tls())


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    commands: list[tuple[Any, ...]] = [
        ("EVALSHA", "0" * 40, 2, "lkd:room:r1", "ünïcode", 0, -7, 2.5, 1_779_000_000_123),
        ("SCRIPT", "LOAD", b"return 1\x00\xff"),
    ]
    assert _resp(commands) == b"".join(Connection().pack_commands(commands))
    with pytest.raises(TypeError, match="cannot send bool"):
        _resp([("EVALSHA", True)])
    # Subclasses of the plain types go as their values (redis-py sends an IntEnum's repr).
    assert _resp([(Kind.ROOM, Level.HIGH)]) == _resp([("room", 3)])
