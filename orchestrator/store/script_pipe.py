"""Lua scripts over one pipelined Redis connection of their own.

A worker runs up to `max_jobs` dispatches at once, and each makes its state changes with one
Lua script. Through redis-py, each script costs a round trip of Python machinery (a pool
check-out, stream reads, a parser per reply), which was a seventh of a dispatch's CPU:
from 200 concurrent callers, 154-164 µs of client CPU per script call against 11-16 µs here
(`python -m bench.protocol_cost`, on a 2-vCPU machine under load: 10-13 times ours).
Here the scripts called during one turn of the event loop go out in one write at the end of
it, without waiting for those in flight, and replies are matched to callers in the order
Redis answers them. Each script is still atomic on its own and answers only its caller;
order among concurrent callers is not promised, as it never was.

A caller that is in no hurry for its answer (recording a dispatch already made) may let its
script linger: it waits up to `linger_s` for company and goes with the next script that
cannot wait. Under load that rides on another job's claim, in the same write.

The connection is taken from `redis`'s pool, so it is opened, authenticated and set to its
database as redis-py does for any other; the pipe then reads its socket itself. Close the
pipe (`aclose`) before the pool; closing the pool (`redis.aclose()`) closes its connection
too, but a call made after that would open another.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError, ResponseError


@dataclass(frozen=True)
class Script:
    source: str
    sha: str


class _Call:
    __slots__ = ("args", "evalsha", "future", "keys", "resent", "script")

    def __init__(
        self, script: Script, keys: list[str], args: list[Any], future: asyncio.Future[Any]
    ) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.future = future
        # Packed now, so an argument Redis cannot take fails its caller here.
        self.evalsha = _resp([("EVALSHA", script.sha, len(keys), *keys, *args)])
        self.resent = False  # as EVAL, after the server did not know the script

    def eval(self) -> bytes:
        return _resp([("EVAL", self.script.source, len(self.keys), *self.keys, *self.args)])


class ScriptPipe(asyncio.Protocol):
    """Runs scripts on a connection taken from `redis`'s pool on first use."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._connection: AbstractConnection | None = None
        self._transport: asyncio.Transport | None = None
        self._stream_protocol: asyncio.BaseProtocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._unsent: list[_Call] = []
        self._sent: deque[_Call] = deque()
        self._flush: asyncio.Handle | asyncio.TimerHandle | None = None
        self._flush_soon = False  # the scheduled flush is this turn's, not a linger's end
        self._closed = False

    @staticmethod
    def script(source: str) -> Script:
        return Script(source, hashlib.sha1(source.encode()).hexdigest())

    async def run(
        self, script: Script, keys: list[str], args: list[Any], *, linger_s: float = 0.0
    ) -> Any:
        """The script's reply; its error as a ResponseError when it failed, ConnectionError
        when the connection failed before the reply came (the script may have run). It is
        written at the end of this turn of the event loop, or within `linger_s`."""
        if self._closed:
            raise ConnectionError("the script pipe is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._unsent.append(_Call(script, keys, args, future))
        if not linger_s:
            if not self._flush_soon:
                if self._flush is not None:
                    self._flush.cancel()
                self._flush = loop.call_soon(self._write)
                self._flush_soon = True
        elif self._flush is None:
            self._flush = loop.call_later(linger_s, self._write)
        return await future

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Answer the scripts already called, waiting up to `timeout_s` for Redis (the rest
        get ConnectionError), then give the connection back; no call after."""
        self._closed = True
        waiting: list[asyncio.Future[Any]] = [call.future for call in (*self._unsent, *self._sent)]
        if self._unsent:
            self._write()
        if self._connecting is not None:
            waiting.append(self._connecting)
        if waiting:
            await asyncio.wait(waiting, timeout=timeout_s)
        if self._connecting is not None:  # Redis unreachable all this time
            self._connecting.cancel()
            await asyncio.wait([self._connecting])
        if self._transport is not None:
            self._transport.close()
        await self._give_back()

    # Writing

    def _write(self) -> None:
        if self._flush is not None:
            self._flush.cancel()  # when called before its time
            self._flush = None
        self._flush_soon = False
        if not self._unsent:
            return
        if self._transport is None:
            if self._connecting is None:
                self._connecting = asyncio.create_task(self._connect())
            return  # written once connected
        batch, self._unsent = self._unsent, []
        try:
            self._transport.write(b"".join(call.evalsha for call in batch))
        except Exception as exc:  # a transport closed under us: those calls did not go
            for call in batch:
                _settle(call.future, exception=ConnectionError(f"Redis write failed: {exc}"))
            self._transport.close()
            return
        self._sent.extend(batch)

    async def _connect(self) -> None:
        try:
            await self._give_back()
            connection = await self._redis.connection_pool.get_connection()
            self._connection = connection
            # The one place this reaches into redis-py: the connected socket's transport,
            # which this protocol reads from now on (connection_lost is passed back, so
            # redis-py's own close of it still completes).
            writer = connection._writer
            assert writer is not None  # the pool hands out connected connections
            transport = cast(asyncio.Transport, writer.transport)
            self._stream_protocol = transport.get_protocol()
            transport.set_protocol(self)
            self._transport = transport
        except BaseException as exc:
            unsent, self._unsent = self._unsent, []
            error = exc if isinstance(exc, Exception) else ConnectionError("connect cancelled")
            for call in unsent:
                _settle(call.future, exception=error)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._connecting = None
        self._write()

    async def _give_back(self) -> None:
        """Return a connection this pipe is done with to the pool, closed."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.disconnect()
            await self._redis.connection_pool.release(connection)

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        reader = self._reader
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError:
                self._transport.close()  # out of step: callers get ConnectionError
                return
            if reply is False:
                return
            if not self._sent:  # a reply nobody asked for: out of step too
                self._transport.close()
                return
            call = self._sent.popleft()
            if (
                isinstance(reply, ResponseError)
                and str(reply).startswith("NOSCRIPT")
                and not call.resent
            ):
                # The server does not know the script (first use, a restart, SCRIPT FLUSH):
                # it did not run. EVAL runs it from its source and teaches it to the server.
                call.resent = True
                self._sent.append(call)
                self._transport.write(call.eval())
            elif isinstance(reply, ResponseError):
                _settle(call.future, exception=reply)
            else:
                _settle(call.future, result=reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._reader = hiredis.Reader(replyError=ResponseError)
        sent, self._sent = self._sent, deque()
        cause = f": {exc}" if exc else ""
        error = ConnectionError(f"Redis connection lost before the script's reply{cause}")
        for call in sent:
            _settle(call.future, exception=error)
        if self._stream_protocol is not None:
            self._stream_protocol.connection_lost(exc)
            self._stream_protocol = None
        # Calls not yet sent (lingering) did not run: their scheduled write reconnects.


def _resp(commands: list[tuple[Any, ...]]) -> bytes:
    """Commands in the Redis protocol (RESP arrays of bulk strings): what redis-py's
    pack_commands makes, for str, bytes, int and float arguments, in a quarter to a half of
    its time (0.35-0.45 for a 6-argument EVALSHA, 0.24-0.34 for the claim's 25 arguments;
    `python -m bench.protocol_cost`)."""
    out: list[bytes] = []
    push = out.append
    for command in commands:
        push(b"*%d\r\n" % len(command))
        for arg in command:
            kind = type(arg)
            if kind is str:  # the common types first, by identity: this runs per argument
                data = arg.encode()
            elif kind is int:
                data = b"%d" % arg
            elif kind is bytes:
                data = arg
            elif isinstance(arg, str):  # StrEnum and other subclasses
                data = str.encode(arg)
            elif isinstance(arg, bytes | bytearray | memoryview):
                data = bytes(arg)
            elif isinstance(arg, int) and not isinstance(arg, bool):
                data = b"%d" % int(arg)
            elif isinstance(arg, float):
                data = repr(float(arg)).encode()
            else:
                raise TypeError(f"cannot send {kind.__name__} to Redis: {arg!r}")
            push(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _settle(future: asyncio.Future[Any], *, result: Any = None, exception: Any = None) -> None:
    if future.done():  # its caller was cancelled (job timeout, shutdown)
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
