"""Fixtures for the livekit_sim tests: a sim on a free port and the real livekit-api client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from livekit import api

from livekit_sim import LiveKitSim
from tests.support.sim import API_KEY, API_SECRET, MakeSim

__all__ = ["API_KEY", "API_SECRET"]


@pytest.fixture
async def sim(make_sim: MakeSim) -> LiveKitSim:
    return await make_sim(missing_room_delay_s=0.05)


@pytest.fixture
async def lkapi(sim: LiveKitSim) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(sim.url, API_KEY, API_SECRET)
    yield client
    await client.aclose()
