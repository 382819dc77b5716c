"""Lua scripts run by concurrent jobs share Redis round trips.

A worker runs up to `max_jobs` dispatches at once, and each makes its state changes with one
Lua script. Sent one by one, every script costs a round trip: a write, a wake-up and a reply
to parse, which was a fifth of a dispatch's CPU. Here a script waits for the batch in flight
to return (at most one round trip, nothing when the worker is idle) and then goes with every
other script that waited, in one pipeline. Each script is still atomic on its own and
answers only its caller; order among concurrent callers is not promised, as it never was.

A caller that is in no hurry for its answer (recording a dispatch already made) may let its
script linger: it waits up to `linger_s` for company and goes at once with the next script
that cannot wait. Under load that rides on another job's claim, for free.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError, ResponseError


@dataclass(frozen=True)
class Script:
    source: str
    sha: str


@dataclass
class _Call:
    script: Script
    keys: list[str]
    args: list[Any]
    future: asyncio.Future[Any]
    due: float  # event loop time by which it is sent


class ScriptBatcher:
    """Runs scripts on a connection of its own, taken from `redis`'s pool on first use."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._connection: Connection | None = None
        self._waiting: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        self._hurry: asyncio.Future[None] | None = None  # set: a call cannot wait

    @staticmethod
    def script(source: str) -> Script:
        return Script(source, hashlib.sha1(source.encode()).hexdigest())

    async def run(
        self, script: Script, keys: list[str], args: list[Any], *, linger_s: float = 0.0
    ) -> Any:
        """The script's reply; its error (as redis-py raises it) when it failed. It is sent
        within `linger_s` plus the round trip in flight."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append(_Call(script, keys, args, future, loop.time() + linger_s))
        if self._sender is None:
            # Started as a task, it sends on the loop's next turn: scripts called in this
            # turn go along.
            self._sender = asyncio.create_task(self._send_all())
        elif not linger_s and self._hurry is not None and not self._hurry.done():
            self._hurry.set_result(None)
        return await future

    async def aclose(self) -> None:
        """Answer the scripts already called, then give the connection back."""
        if self._sender is not None:
            await asyncio.shield(self._sender)
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await self._redis.connection_pool.release(connection)

    async def _send_all(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                due = min(call.due for call in self._waiting)
                if due > loop.time():  # every waiting call may linger
                    hurry = self._hurry = loop.create_future()
                    timer = loop.call_at(due, _wake, hurry)
                    await hurry
                    timer.cancel()
                    self._hurry = None
                batch, self._waiting = self._waiting, []
                await self._send(batch)
        finally:
            self._sender = None
            self._hurry = None

    async def _send(self, batch: list[_Call]) -> None:
        commands = [("EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args) for c in batch]
        try:
            replies = await self._exchange(commands)
            unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if unknown:
                # The server does not know these scripts yet (first use, a restart, SCRIPT
                # FLUSH): they did not run; load them and send those calls again.
                sources = {batch[i].script.source for i in unknown}
                await self._exchange([("SCRIPT", "LOAD", source) for source in sources])
                again = await self._exchange([commands[i] for i in unknown])
                for i, reply in zip(unknown, again, strict=True):
                    replies[i] = reply
        except BaseException as exc:  # the connection failed: every caller gets the error
            for call in batch:
                _settle(call, exception=exc)
            if not isinstance(exc, Exception):
                raise
            return
        for call, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                _settle(call, exception=reply)
            else:
                _settle(call, result=reply)

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Each command's reply, or its error reply as a ResponseError, in order."""
        if self._connection is None:
            self._connection = await self._redis.connection_pool.get_connection()
        connection = self._connection
        try:
            await connection.send_packed_command(_resp(commands), False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            # Out of step with the server: the next batch starts on a new connection.
            await connection.disconnect(nowait=True)
            raise


def _resp(commands: list[tuple[Any, ...]]) -> bytes:
    """Commands in the Redis protocol (RESP arrays of bulk strings): what redis-py's
    pack_commands makes, for str, bytes, int and float arguments, in a third of its time."""
    out = bytearray()
    for command in commands:
        out += b"*%d\r\n" % len(command)
        for arg in command:
            if isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, int | float) and not isinstance(arg, bool):
                data = repr(arg).encode()
            else:
                raise TypeError(f"cannot send {type(arg).__name__} to Redis: {arg!r}")
            out += b"$%d\r\n%s\r\n" % (len(data), data)
    return bytes(out)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _settle(call: _Call, *, result: Any = None, exception: BaseException | None = None) -> None:
    if call.future.done():  # its caller was cancelled (job timeout, shutdown)
        return
    if exception is not None:
        call.future.set_exception(exception)
    else:
        call.future.set_result(result)
