"""Fixtures: the HTTP service on a real port, a LiveKitSim whose webhooks reach it, and
clients with and without the API token. The orchestrator fixtures (an in-process worker,
a protocol-level agent worker) come from tests/orchestrator."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.settings import Settings
from tests.orchestrator.conftest import (  # noqa: F401  (fixtures)
    API_KEY,
    API_SECRET,
    agent_worker,
    arq_redis,
    make_settings,
    orchestrator,
    run_worker,
)
from tests.support.http_service import base_url, listening_socket, running_service
from tests.support.sim import MakeSim

TOKEN = "http-test-token-0123456789"


@pytest.fixture
def http_socket() -> Iterator[socket.socket]:
    """The service's listening socket, bound first so the sim can be told where to post."""
    sock = listening_socket()
    yield sock
    sock.close()


@pytest.fixture
async def sim(http_socket: socket.socket, make_sim: MakeSim) -> LiveKitSim:
    return await make_sim(
        webhook_urls=[base_url(http_socket) + "/livekit/webhook"],
        missing_room_delay_s=0.3,  # the real server's 3 s, shortened for the suite's time
    )


@pytest.fixture
def settings(redis_server: LocalRedis, sim: LiveKitSim) -> Settings:
    return make_settings(redis_server, sim, api_token=TOKEN, metrics_flush_interval_s=0.1)


@dataclass
class Service:
    url: str
    settings: Settings
    app: web.Application


@pytest.fixture
async def service(
    settings: Settings,
    http_socket: socket.socket,
    arq_redis: object,  # noqa: F811  (Redis flushed before the app starts)
) -> AsyncIterator[Service]:
    """The HTTP service, running in this process on `http_socket` (Redis flushed first)."""
    async with running_service(settings, http_socket) as (url, app):
        yield Service(url, settings, app)


@pytest.fixture
async def client(service: Service) -> AsyncIterator[aiohttp.ClientSession]:
    """A client sending the API token."""
    async with aiohttp.ClientSession(
        base_url=service.url, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as session:
        yield session


@pytest.fixture
async def anonymous(service: Service) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=service.url) as session:
        yield session
