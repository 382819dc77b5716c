"""The orchestrator's Twirp client and call tokens: what livekit-api's client would send and
read, against livekit_sim, and the HTTP situations a long-lived worker meets (answers in
chunks, idle connections the server closed, a server that never answers, none at all)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from livekit import api

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import free_port
from orchestrator.gateway.errors import classify
from orchestrator.gateway.tokens import ApiTokenSigner
from orchestrator.gateway.twirp import USER_AGENT, ClosedBeforeResponse, TwirpClient
from tests.orchestrator.conftest import API_KEY, API_SECRET
from tests.support.tls import self_signed
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

CREATE = "AgentDispatchService/CreateDispatch"


def client_for(url: str, timeout_s: float = 5.0) -> TwirpClient:
    return TwirpClient(url, timeout_s=timeout_s)


async def create(client: TwirpClient, room: str, secret: str = API_SECRET) -> api.AgentDispatch:
    signer = ApiTokenSigner(API_KEY, secret)
    return await client.call(
        "AgentDispatchService",
        "CreateDispatch",
        api.CreateAgentDispatchRequest(agent_name="support-agent", room=room, metadata="{}"),
        api.AgentDispatch,
        signer.authorization(roomAdmin=True, room=room),
    )


def test_call_token_is_the_jwt_livekit_api_signs() -> None:
    header = ApiTokenSigner(API_KEY, API_SECRET).authorization(roomAdmin=True, room="r1")
    scheme, token = header.split(" ")
    claims = jwt.decode(token, API_SECRET, algorithms=["HS256"], issuer=API_KEY)
    assert scheme == "Bearer"
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert claims["video"] == {
        "roomAdmin": True, "room": "r1", "canPublish": True, "canSubscribe": True,
        "canPublishData": True,
    }  # fmt: skip
    assert claims["sub"] == ""
    assert 0 < claims["exp"] - claims["nbf"] <= 3600
    # livekit-api's own verifier reads it as the same grants.
    verified = api.TokenVerifier(API_KEY, API_SECRET).verify(token)
    assert verified.video is not None
    assert verified.video.room_admin
    assert verified.video.room == "r1"


def test_a_callers_grant_overrides_the_default_as_in_video_grants() -> None:
    header = ApiTokenSigner(API_KEY, API_SECRET).authorization(room="r1", canPublish=False)
    verified = api.TokenVerifier(API_KEY, API_SECRET).verify(header.split(" ")[1])
    assert verified.video is not None
    assert verified.video.can_publish is False
    assert verified.video.can_subscribe is True


async def test_sequential_and_concurrent_calls_each_get_their_answer(sim: LiveKitSim) -> None:
    client = client_for(sim.url)
    try:
        dispatches = [await create(client, f"room-{i}") for i in range(5)]
        dispatches += await asyncio.gather(*(create(client, f"room-c{i}") for i in range(5)))
    finally:
        await client.aclose()
    assert all(d.id.startswith("AD_") for d in dispatches)
    assert [d.room for d in dispatches[:5]] == [f"room-{i}" for i in range(5)]
    calls = [c for c in sim.calls if c.method == CREATE]
    assert len(calls) == 10
    assert {c.code for c in calls} == {"ok"}


async def test_wrong_secret_is_a_401_that_names_the_credentials(sim: LiveKitSim) -> None:
    client = client_for(sim.url)
    try:
        with pytest.raises(api.ServerError) as raised:
            await create(client, "room-1", secret="not-the-secret-at-all-but-long-enough")
        error = classify(raised.value, "CreateDispatch")
    finally:
        await client.aclose()
    assert raised.value.status == 401
    assert error.code == "unauthenticated"
    assert not error.retryable
    assert "LIVEKIT_API_KEY and LIVEKIT_API_SECRET" in str(error)


async def test_twirp_error_answer_keeps_its_code_and_message(sim: LiveKitSim) -> None:
    client = client_for(sim.url)
    signer = ApiTokenSigner(API_KEY, API_SECRET)
    try:
        await create(client, "room-1")
        with pytest.raises(api.ServerError) as raised:
            await client.call(
                "AgentDispatchService",
                "DeleteDispatch",
                api.DeleteAgentDispatchRequest(dispatch_id="AD_unknown", room="room-1"),
                api.AgentDispatch,
                signer.authorization(roomAdmin=True, room="room-1"),
            )
    finally:
        await client.aclose()
    assert (raised.value.code, raised.value.status) == ("not_found", 404)
    assert raised.value.message == "dispatch ID not found"


# -- HTTP situations, against small servers of our own ------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def http_server(
    handler: Handler, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls)
    await site.start()
    try:
        yield f"{'https' if tls else 'http'}://{host}:{port}"
    finally:
        await runner.cleanup()


async def protobuf_dispatch(request: web.Request) -> web.Response:
    body = dispatch_for(await request.read()).SerializeToString()
    return web.Response(body=body, content_type="application/protobuf")


async def test_https_checks_the_certificate_of_the_host_named(tmp_path: Path) -> None:
    server_tls, trusting = self_signed(tmp_path, "localhost")
    async with http_server(protobuf_dispatch, server_tls, host="localhost") as url:
        client = TwirpClient(url, timeout_s=5, ssl_context=trusting)
        untrusting = TwirpClient(url, timeout_s=5)  # the system's CAs do not know it
        try:
            dispatch = await create(client, "room-tls")
            with pytest.raises(ssl.SSLCertVerificationError):
                await create(untrusting, "room-tls")
        finally:
            await client.aclose()
            await untrusting.aclose()
    assert (dispatch.id, dispatch.room) == ("AD_test", "room-tls")


def dispatch_for(request_body: bytes) -> api.AgentDispatch:
    asked = api.CreateAgentDispatchRequest.FromString(request_body)
    return api.AgentDispatch(id="AD_test", agent_name=asked.agent_name, room=asked.room)


async def test_request_carries_livekit_api_headers_and_url_path() -> None:
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        return await protobuf_dispatch(request)

    async with http_server(handler) as url:
        client = client_for(url + "/behind/a/proxy/")
        try:
            dispatch = await create(client, "room-h")
            await create(client, "room-i")
        finally:
            await client.aclose()
        other_client = client_for(url)
        try:
            await create(other_client, "room-j")
        finally:
            await other_client.aclose()
    assert dispatch.room == "room-h"
    request = seen[0]
    assert request.path == "/behind/a/proxy/twirp/livekit.AgentDispatchService/CreateDispatch"
    assert request.headers["Content-Type"] == "application/protobuf"
    assert request.headers["User-Agent"] == USER_AGENT
    assert request.headers["Authorization"].startswith("Bearer ey")
    assert len(request.headers["X-Livekit-Request-Id"]) == 36
    # An idempotency key per request: no two alike, in one client or across clients.
    assert len({r.headers["X-Livekit-Request-Id"] for r in seen}) == 3


async def test_chunked_answer_is_read_whole() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = dispatch_for(await request.read()).SerializeToString()
        response = web.StreamResponse(headers={"Content-Type": "application/protobuf"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(len(body)):
            await response.write(body[i : i + 1])
        await response.write_eof()
        return response

    async with http_server(handler) as url:
        client = client_for(url)
        try:
            dispatch = await create(client, "room-chunked")
        finally:
            await client.aclose()
    assert (dispatch.id, dispatch.room) == ("AD_test", "room-chunked")


@contextlib.asynccontextmanager
async def server_closing_second_requests(
    request_ids: list[str], peers: set[object]
) -> AsyncIterator[str]:
    """A server that answers the first request on each connection and closes the connection
    on the second, unanswered: a kept-alive connection it closed as the client sent on it."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        peers.add(writer.get_extra_info("peername"))
        answered = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = dict(
                line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
            )
            body = await reader.readexactly(int(headers["Content-Length"]))
            request_ids.append(headers["X-Livekit-Request-Id"])
            if answered == 1:
                writer.close()
                return
            answer = dispatch_for(body).SerializeToString()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/protobuf\r\n")
            writer.write(f"Content-Length: {len(answer)}\r\n\r\n".encode() + answer)
            answered += 1

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_repeatable_call_on_a_connection_the_server_closed_goes_again() -> None:
    request_ids: list[str] = []
    peers: set[object] = set()
    async with server_closing_second_requests(request_ids, peers) as url:
        client = client_for(url)
        signer = ApiTokenSigner(API_KEY, API_SECRET)
        try:
            await create(client, "room-1")
            again = await client.call(
                "AgentDispatchService",
                "CreateDispatch",  # the stub server answers any call with a dispatch
                api.CreateAgentDispatchRequest(agent_name="a", room="room-2"),
                api.AgentDispatch,
                signer.authorization(roomAdmin=True, room="room-2"),
                repeatable=True,
            )
        finally:
            await client.aclose()
    assert again.room == "room-2"
    assert len(request_ids) == 3
    assert request_ids[1] == request_ids[2]  # sent again with the same idempotency key
    assert len(peers) == 2


async def test_create_dispatch_is_never_sent_twice_by_the_transport() -> None:
    """LiveKit may have made the dispatch before the connection closed: the failure goes to
    the job, whose retry looks for that dispatch before making one."""
    request_ids: list[str] = []
    peers: set[object] = set()
    async with server_closing_second_requests(request_ids, peers) as url:
        client = client_for(url)
        try:
            await create(client, "room-1")
            with pytest.raises(ClosedBeforeResponse) as raised:
                await create(client, "room-2")
        finally:
            await client.aclose()
    assert len(request_ids) == 2
    error = classify(raised.value, "CreateDispatch")
    assert (error.code, error.retryable) == ("connection", True)


async def test_server_that_never_answers_times_out_as_retryable() -> None:
    stop = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await stop.wait()
        return web.Response()

    async with http_server(handler) as url:
        client = client_for(url, timeout_s=0.3)
        try:
            with pytest.raises(TimeoutError) as raised:
                await create(client, "room-slow")
        finally:
            stop.set()
            await client.aclose()
    error = classify(raised.value, "CreateDispatch")
    assert (error.code, error.retryable) == ("timeout", True)


async def test_no_server_is_a_retryable_connection_error() -> None:
    client = client_for(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(OSError, match=r"Connect call failed|refused") as raised:
            await create(client, "room-1")
    finally:
        await client.aclose()
    error = classify(raised.value, "CreateDispatch")
    assert (error.code, error.retryable) == ("connection", True)
    assert "is LIVEKIT_URL right" in str(error)


def test_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="not an http"):
        TwirpClient("redis://localhost:6379", timeout_s=1)


@contextlib.asynccontextmanager
async def keep_alive_server(accepted: list[object], ended: list[object]) -> AsyncIterator[str]:
    """A server that answers every request and keeps each connection open until the client
    closes it; it lists the connections it accepted and those the client ended."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        peer = writer.get_extra_info("peername")
        accepted.append(peer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                answer = dispatch_for(await reader.readexactly(length)).SerializeToString()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/protobuf\r\n")
                writer.write(f"Content-Length: {len(answer)}\r\n\r\n".encode() + answer)
        except asyncio.IncompleteReadError:  # the client closed the connection
            ended.append(peer)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_an_idle_connection_is_reused_until_its_keep_alive_expires() -> None:
    """A connection idle past the expiry is closed, not reused: the server or a load balancer
    may be closing it just then, and a CreateDispatch written on it would fail its try."""
    now = [1000.0]
    accepted: list[object] = []
    ended: list[object] = []
    async with keep_alive_server(accepted, ended) as url:
        client = TwirpClient(url, timeout_s=5, keepalive_expiry_s=4.0, clock=lambda: now[0])
        try:
            await create(client, "room-1")
            now[0] += 4.0  # idle for exactly the expiry: still good
            await create(client, "room-2")
            assert len(accepted) == 1
            now[0] += 4.5  # idle past it
            await create(client, "room-3")
            assert len(accepted) == 2
            await eventually(lambda: ended == accepted[:1], what="the expired connection closed")
            await create(client, "room-4")  # the new connection is kept alive in turn
        finally:
            await client.aclose()
    assert len(accepted) == 2
