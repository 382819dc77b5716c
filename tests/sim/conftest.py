"""Fixtures for the livekit_sim tests: a sim on a free port and the real livekit-api client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from livekit import api

from livekit_sim import LiveKitSim

API_KEY = "test-key"
# PyJWT warns (an error under pytest) on HMAC secrets under 32 bytes.
API_SECRET = "test-secret-0123456789-abcdefghijklmnop"


async def wait_for(
    condition: Callable[[], object], *, timeout_s: float = 5.0, what: str = "condition"
) -> None:
    """Poll `condition` until it is truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def sim() -> AsyncIterator[LiveKitSim]:
    async with LiveKitSim(
        api_key=API_KEY, api_secret=API_SECRET, missing_room_delay_s=0.05
    ) as server:
        yield server


@pytest.fixture
async def lkapi(sim: LiveKitSim) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(sim.url, API_KEY, API_SECRET)
    yield client
    await client.aclose()
