"""A client's mistake gets a 4xx that names the problem: never a 5xx, never a traceback, and
what the OpenAPI document allows is what the API takes."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest

from livekit_sim.webhooks import sign_body
from tests.http.conftest import API_KEY, API_SECRET, TOKEN, Service
from tests.http.test_api import call

pytestmark = pytest.mark.integration


async def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (a client aiohttp would not let us be) and read the answer."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_a_bearer_token_that_is_not_utf8_is_just_a_wrong_token(service: Service) -> None:
    request = (
        b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer \xff\xfe" + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n"
    )
    status, body = await raw_request(service.url, request)
    assert status == 401
    assert json.loads(body)["error"] == "unauthorized"


async def test_a_body_that_is_not_the_encoding_it_claims_is_400(
    client: aiohttp.ClientSession,
) -> None:
    plain = json.dumps({"event_id": "e-gz", "room": "r"}).encode()
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    # aiohttp closes a connection whose body it could not read: not one to send more on.
    status, body = await call(
        client, "POST", "/v1/dispatches", data=plain, headers={**headers, "Connection": "close"}
    )
    assert (status, body["error"]) == (400, "bad_body")
    assert "encoding" in body["reason"]
    # The same body, compressed as it says, is fine.
    status, _ = await call(
        client, "POST", "/v1/dispatches", data=gzip.compress(plain), headers=headers
    )
    assert status == 202


@pytest.mark.parametrize(
    "entry_id",
    ["\uff11\uff12-\uff13", "\u00b2-\u00b3", "18446744073709551616-0", "1-2-3", "-1-0"],
)
async def test_a_replay_of_something_that_is_no_stream_id_is_404(
    client: aiohttp.ClientSession, entry_id: str
) -> None:
    status, body = await call(client, "POST", f"/v1/dead-letters/{quote(entry_id)}/replay")
    assert (status, body["error"]) == (404, "not_found")
    assert "no dead letter" in body["reason"]


async def test_a_signed_webhook_too_large_is_413_not_401(
    anonymous: aiohttp.ClientSession,
) -> None:
    body = b'{"event": "room_finished", "pad": "' + b"x" * 10_000_000 + b'"}'
    headers = {"Authorization": sign_body(body, API_KEY, API_SECRET)}
    sent = io.BytesIO(body)
    async with anonymous.post("/livekit/webhook", data=sent, headers=headers) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"] == "too_large"


async def test_the_document_says_what_the_api_takes(anonymous: aiohttp.ClientSession) -> None:
    async with anonymous.get("/openapi.json") as resp:
        doc: dict[str, Any] = await resp.json()
    event = doc["components"]["schemas"]["DispatchBody"]["properties"]
    assert event["event_id"]["pattern"] == "^[A-Za-z0-9._:@/+=-]+$"
    assert "256 bytes" in event["room"]["description"]
    post = doc["paths"]["/v1/dispatches"]["post"]["responses"]
    assert {"400", "413", "503"} <= set(post)
    hook = doc["paths"]["/livekit/webhook"]["post"]["responses"]
    assert {"400", "401", "413"} <= set(hook)
