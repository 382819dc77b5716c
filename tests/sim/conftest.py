"""Fixtures for the livekit_sim tests: a sim on a free port and the real livekit-api client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from livekit import api

from livekit_sim import LiveKitSim

API_KEY = "test-key"
# PyJWT warns (an error under pytest) on HMAC secrets under 32 bytes.
API_SECRET = "test-secret-0123456789-abcdefghijklmnop"


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
