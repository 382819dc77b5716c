"""The HTTP service (`orchestrator serve`) running in the test's own event loop."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from orchestrator.http import create_app
from orchestrator.settings import Settings


def listening_socket() -> socket.socket:
    """A loopback socket bound to a free port, to be served on (bound first, so that its URL
    can be given to the sim for its webhooks before the service starts)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def base_url(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings, sock: socket.socket | None = None
) -> AsyncIterator[tuple[str, web.Application]]:
    """(its base URL, its app) while the service runs on `sock` (or a free port)."""
    own = sock is None
    sock = sock or listening_socket()
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield base_url(sock), app
    finally:
        await runner.cleanup()
        if own:
            sock.close()
