"""LiveKitSim: the aiohttp application that stands in for livekit-server.

THIS FILE IS A SKELETON: the sim-core work fills in rooms, Twirp, control API and webhooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from aiohttp import web

from livekit_sim.faults import Faults
from livekit_sim.workers import WorkerPool

DEV_API_KEY = "devkey"
DEV_API_SECRET = "secret"


class LiveKitSim:
    """A local LiveKit-compatible server: `async with LiveKitSim() as sim: sim.url ...`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = DEV_API_KEY,
        api_secret: str = DEV_API_SECRET,
        extra_keys: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.api_secret = api_secret
        self.keys: dict[str, str] = {api_key: api_secret, **(extra_keys or {})}
        self.faults = Faults()
        self.workers = WorkerPool(self.keys, self.faults)
        self.app = web.Application()
        self.app.router.add_get("/agent", self.workers.handle)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> LiveKitSim:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        await self.workers.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LiveKitSim:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
