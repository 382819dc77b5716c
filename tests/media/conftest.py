"""Fixtures for the media tests: the real `livekit` SDK against the sim, inside the private
network namespace that `tests.media.netns` sets up (`make test` runs the suite in it).

Outside that namespace these tests skip: libwebrtc ignores loopback interfaces, and the tests
must not use the machine's real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from livekit import api, rtc

from livekit_sim import LiveKitSim
from tests.media.netns import ADDR_ENV, UNAVAILABLE_ENV
from tests.support.sim import API_KEY, API_SECRET, MakeSim

__all__ = ["API_KEY", "API_SECRET"]

FIXTURES = Path(__file__).parent / "fixtures"
CALLER_WAV = FIXTURES / "caller.wav"


def _skip_reason() -> str | None:
    if os.environ.get(ADDR_ENV):
        return None
    why = os.environ.get(UNAVAILABLE_ENV)
    if why:
        return f"WebRTC media tests need a private network namespace, unavailable here: {why}"
    return (
        "WebRTC media tests run inside a private network namespace: use `make test` or "
        "`python -m tests.media.netns -- python -m pytest tests/media`"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    if reason is None:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=reason))


def media_agent_env(sim: LiveKitSim, redis_url: str, agent_name: str) -> dict[str, str]:
    """The variables of a real agent worker (the default handler) in the media tests."""
    return {
        "LIVEKIT_URL": sim.url,
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
        "AGENT_NAME": agent_name,
        "REDIS_URL": redis_url,
        "AGENT_HEALTH_HOST": "127.0.0.1",
        "AGENT_HEALTH_PORT": "0",
        "AGENT_NUM_IDLE_PROCESSES": "1",
        "AGENT_COUNT_CPU_LOAD": "false",  # the machine's CPU must not make tests flaky
        "AGENT_HEARTBEAT_INTERVAL_S": "0.5",
        "AGENT_WORKER_HEARTBEAT_INTERVAL_S": "0.5",
    }


def sdk_token(
    identity: str,
    room: str,
    *,
    kind: str = "",
    can_update_metadata: bool = False,
    can_publish: bool = True,
    hidden: bool = False,
) -> str:
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_update_own_metadata=can_update_metadata,
        can_publish=can_publish,
        hidden=hidden,
    )
    token = api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_grants(grants)
    if kind:
        token = token.with_kind(kind)  # type: ignore[arg-type]
    return token.to_jwt()


@contextlib.asynccontextmanager
async def sdk_room(
    sim: LiveKitSim, identity: str, room: str, **grants: bool
) -> AsyncIterator[rtc.Room]:
    """A real SDK client connected to `room` as `identity`; disconnected at the end."""
    client = rtc.Room()
    await asyncio.wait_for(client.connect(sim.url, sdk_token(identity, room, **grants)), 30)
    try:
        yield client
    finally:
        await client.disconnect()


def frame_samples(frame: rtc.AudioFrame) -> np.ndarray:
    """The frame's samples as mono int16."""
    data = np.frombuffer(frame.data, dtype=np.int16)
    return data.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)


@dataclass
class Hooks:
    """A webhook receiver on loopback: the events it got, in order."""

    url: str = ""
    events: list[dict[str, object]] = field(default_factory=list)

    def names(self, predicate: Callable[[dict[str, object]], bool] = lambda e: True) -> list[str]:
        return [str(e["event"]) for e in self.events if predicate(e)]


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    state = Hooks()

    async def handle(request: web.Request) -> web.Response:
        state.events.append(json.loads(await request.text()))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield state
    await runner.cleanup()


@pytest.fixture
async def sim(hooks: Hooks, make_sim: MakeSim) -> LiveKitSim:
    return await make_sim(
        webhook_urls=[hooks.url],
        departure_timeout_s=1.0,
        room_check_interval_s=0.1,
        missing_room_delay_s=0.05,
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many WebRTC media tests ran, and where: CI must show they were not skipped."""
    outcomes: dict[str, int] = {}
    for key in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(key, []):
            nodeid = getattr(report, "nodeid", "")
            if nodeid.startswith("tests/media/") and (report.when == "call" or key != "passed"):
                outcomes[key] = outcomes.get(key, 0) + 1
    if not outcomes:
        return
    where = (
        f"inside a private network namespace ({os.environ[ADDR_ENV]})"
        if os.environ.get(ADDR_ENV)
        else "outside a network namespace"
    )
    counts = ", ".join(f"{n} {key}" for key, n in sorted(outcomes.items()))
    terminalreporter.write_line(f"WebRTC media tests {where}: {counts}")
