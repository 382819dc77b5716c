"""Webhook delivery, signed as livekit-server signs it (protocol webhook/url_notifier.go).

Each event is a protojson `WebhookEvent` (lowerCamelCase, unpopulated fields omitted) with an
`EV_` id and `created_at` in unix seconds, POSTed to every configured URL with
`Authorization: <jwt>` (no "Bearer"), the JWT carrying the body's base64 sha256 in its
`sha256` claim, signed with the webhook API key and valid 5 minutes. Events wait in a bounded
queue and are dropped when it is full (counted in `dropped`), as on the real server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from datetime import timedelta

import aiohttp
from google.protobuf import json_format
from livekit import api
from livekit.protocol import models, webhook

from livekit_sim import ids

log = logging.getLogger(__name__)

QUEUE_SIZE = 100
DELIVERY_WORKERS = 4
MAX_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.2
REQUEST_TIMEOUT_S = 5.0
TOKEN_TTL = timedelta(minutes=5)


def encode_event(event: webhook.WebhookEvent) -> bytes:
    """The body the real server sends: protojson, lowerCamelCase, unpopulated omitted."""
    return json.dumps(json_format.MessageToDict(event), separators=(",", ":")).encode()


def sign_body(body: bytes, api_key: str, api_secret: str) -> str:
    """The Authorization header value for `body`: a JWT with the body's sha256 claim."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return api.AccessToken(api_key, api_secret).with_ttl(TOKEN_TTL).with_sha256(digest).to_jwt()


class WebhookNotifier:
    """Queues room and participant events and POSTs them to `urls` in the background."""

    def __init__(self, urls: Sequence[str], api_key: str, api_secret: str) -> None:
        self.urls = list(urls)
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._api_key = api_key
        self._api_secret = api_secret
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_SIZE)
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def notify(
        self, event: str, room: models.Room, participant: models.ParticipantInfo | None
    ) -> None:
        """Queue one event; dropped (and counted) when the queue is full or no URL is set."""
        if not self.urls:
            return
        message = webhook.WebhookEvent(
            event=event, room=room, id=ids.new_id(ids.EVENT), created_at=int(time.time())
        )
        if participant is not None:
            message.participant.CopyFrom(participant)
        try:
            self._queue.put_nowait(encode_event(message))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("webhook queue full, dropping %s", event)

    async def start(self) -> None:
        if not self.urls:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            headers={"User-Agent": "LiveKit"},
        )
        self._workers = [asyncio.create_task(self._deliver()) for _ in range(DELIVERY_WORKERS)]

    async def join(self) -> None:
        """Wait until every queued event has been delivered or given up."""
        await self._queue.join()

    async def aclose(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _deliver(self) -> None:
        while True:
            body = await self._queue.get()
            try:
                for url in self.urls:
                    await self._post(url, body)
            finally:
                self._queue.task_done()

    async def _post(self, url: str, body: bytes) -> None:
        assert self._session is not None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            headers = {
                "Authorization": sign_body(body, self._api_key, self._api_secret),
                "Content-Type": "application/webhook+json",
            }
            try:
                async with self._session.post(url, data=body, headers=headers) as resp:
                    if resp.status < 500:
                        self.delivered += 1
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("webhook to %s failed (attempt %d): %s", url, attempt, type(exc).__name__)
            if attempt < MAX_ATTEMPTS:
                await asyncio.sleep(RETRY_BACKOFF_S * attempt)
        self.failed += 1
