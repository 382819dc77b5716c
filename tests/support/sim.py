"""The LiveKit stand-in as every test starts it: the suite's credentials, and the knobs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from livekit_sim import LiveKitSim

API_KEY = "test-key"
# PyJWT warns (an error under pytest) on HMAC secrets under 32 bytes.
API_SECRET = "test-secret-0123456789-abcdefghijklmnop"

MakeSim = Callable[..., Awaitable[LiveKitSim]]


def running_sim(**knobs: Any) -> LiveKitSim:
    """A stand-in to enter with `async with`; `knobs` are LiveKitSim's keyword arguments
    (credentials included, to override the suite's)."""
    return LiveKitSim(**{"api_key": API_KEY, "api_secret": API_SECRET, **knobs})
