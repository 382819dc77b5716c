"""LiveKit's Twirp API over kept-alive HTTP/1.1 connections, for the orchestrator's hot path.

Speaks what livekit-api's `TwirpClient` speaks: `POST <url>/twirp/livekit.<Service>/<Method>`
with a protobuf body, `Content-Type: application/protobuf`, an `X-Livekit-Request-Id`
idempotency key and the caller's `Authorization`; a 200 carries the protobuf answer, any
other status a Twirp JSON error (`code`, `msg`, `meta`), raised as livekit-api's
`ServerError`. Transport failures raise `OSError` (`ConnectionError`), timeouts
`TimeoutError`. `orchestrator.gateway.errors.classify` reads all three.

Why not livekit-api's client: it rides on aiohttp, whose per-request machinery cost more CPU
than the rest of a dispatch's own work (bench/profile_dispatch.py). A CreateDispatch to
livekit_sim, 50 at once, took 180-220 µs of client CPU here, token included, against
770-820 µs through `LiveKitAPI.agent_dispatch` (`python -m bench.protocol_cost`, on a 2-vCPU
machine under load: 3.5-4.5 times ours).

What this leaves out: livekit-api's region failover, which replays a failed call against
another LiveKit Cloud region; here a failed call fails the try, and the job retries it with
backoff (and adopts a dispatch the failed try may have made).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import TypeVar, cast
from urllib.parse import urlsplit

import httptools
from google.protobuf.message import Message
from livekit.api import ServerError

T = TypeVar("T", bound=Message)
USER_AGENT = "livekit-dispatch-orchestrator"
# An idle connection older than this is closed rather than reused. A server or load balancer
# closes a kept-alive connection idle for its own timeout, and a CreateDispatch written on one
# as it closes fails its try (it is not sent again: LiveKit may have acted on it). 4 s is
# under the shortest idle timeout in common use (Node.js's 5 s; nginx 75 s, AWS ALB 60 s), as
# httpx's 5 s is; a busy worker still reuses its connections, only a quiet one reconnects.
KEEPALIVE_EXPIRY_S = 4.0


class ClosedBeforeResponse(ConnectionError):
    """The server closed the connection before a byte of the answer came."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one exchange at a time, answers parsed by llhttp."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0  # on the client's clock
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._body = bytearray()
        self._received = False

    async def exchange(self, request: bytes, deadline: float) -> tuple[int, bytes]:
        """Send one request, return its status and body; TimeoutError (and the connection
        closed) when no whole answer came by `deadline` (event loop time)."""
        assert self.transport is not None
        assert self._answer is None
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        self._received = False
        timer = loop.call_at(deadline, self._time_out)
        self.transport.write(request)
        try:
            return await self._answer
        finally:
            timer.cancel()
            self._answer = None

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # nothing asked: the connection is out of step
            self.close()
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP answer from LiveKit: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._received:
            self._fail(ConnectionError("LiveKit closed the connection in the middle of an answer"))
        else:
            self._fail(ClosedBeforeResponse("LiveKit closed the connection before answering"))

    # httptools callbacks

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.reusable = self._parser.should_keep_alive()
        body, self._body = bytes(self._body), bytearray()
        if self._answer is not None and not self._answer.done():
            self._answer.set_result((self._parser.get_status_code(), body))

    def _time_out(self) -> None:
        self._fail(TimeoutError("LiveKit did not answer in time"))
        self.close()

    def _fail(self, exc: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)


class TwirpClient:
    """Calls to one LiveKit server, at most `max_connections` at once, each within
    `timeout_s` (waiting for a free connection included). An https URL's certificate is
    checked against `ssl_context`, by default the system's CAs. A connection idle for longer
    than `keepalive_expiry_s` (on `clock`) is closed instead of reused."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        max_connections: int = 200,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = None
        if parts.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        authority = f"[{self._host}]" if ":" in self._host else self._host
        self._authority = authority if parts.port is None else f"{authority}:{parts.port}"
        self._base_path = parts.path.rstrip("/")
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()  # the longest idle first
        self._keepalive_expiry_s = keepalive_expiry_s
        self._clock = clock
        self._closed = False
        # Request ids: unique as livekit-api's uuid4s are (a prefix with 74 random bits for
        # this client, then a counter), without a call to the OS's random source per request.
        self._request_id_prefix = str(uuid.uuid4())[:24]
        self._request_numbers = itertools.count()

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[T],
        auth: str,
        *,
        repeatable: bool = False,
    ) -> T:
        """`auth` is the Authorization header's value. A `repeatable` call (one that changes
        nothing, or nothing more when made twice) is sent again on a new connection when the
        kept-alive one it went on was closed before any answer; any other call then fails
        with ClosedBeforeResponse, since LiveKit may have acted on it (RFC 9112, 9.3.1)."""
        body = request.SerializeToString()
        head = (
            f"POST {self._base_path}/twirp/livekit.{service}/{method} HTTP/1.1\r\n"
            f"Host: {self._authority}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            "Content-Type: application/protobuf\r\n"
            f"Authorization: {auth}\r\n"
            f"X-Livekit-Request-Id: {self._request_id_prefix}{next(self._request_numbers):012x}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        if self._slots.locked():  # all connections busy: wait for one, within the deadline
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        try:
            status, answer = await self._exchange(
                head.encode("latin-1") + body, deadline, repeatable
            )
        finally:
            self._slots.release()
        if status == 200:
            return response_type.FromString(answer)
        raise _twirp_error(status, answer)

    async def aclose(self) -> None:
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    async def _exchange(
        self, request: bytes, deadline: float, repeatable: bool
    ) -> tuple[int, bytes]:
        connection, reused = await self._connection(deadline)
        try:
            answer = await connection.exchange(request, deadline)
        except ClosedBeforeResponse:
            connection.close()
            if not (reused and repeatable):
                raise
            # Most likely the server closed this idle connection as we sent on it (its idle
            # timeout): the request goes once more on a new connection, with the same
            # idempotency key.
            connection, _ = await self._connection(deadline, fresh=True)
            try:
                answer = await connection.exchange(request, deadline)
            except BaseException:
                connection.close()
                raise
        except BaseException:
            connection.close()
            raise
        if connection.reusable and not self._closed:
            connection.idle_since = self._clock()
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    async def _connection(
        self, deadline: float, *, fresh: bool = False
    ) -> tuple[_Connection, bool]:
        """The most recently idle connection that has not expired (True), or a new one
        (False)."""
        if not fresh:
            idle = self._idle
            expired = self._clock() - self._keepalive_expiry_s
            while idle and idle[0].idle_since < expired:
                idle.popleft().close()
            while idle:
                connection = idle.pop()
                if not connection.closed:
                    return connection, True
        async with asyncio.timeout_at(deadline):
            _, connection = await asyncio.get_running_loop().create_connection(
                _Connection,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )
        return connection, False


def _twirp_error(status: int, answer: bytes) -> ServerError:
    """As livekit-api reads a failed call: the Twirp JSON error, or code `unknown`."""
    try:
        data = json.loads(answer)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {}
    meta = data.get("meta")
    return ServerError(
        str(data.get("code", "unknown")),
        str(data.get("msg", "")),
        status=status,
        metadata=meta if isinstance(meta, dict) else None,
    )
