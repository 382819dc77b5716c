"""`orchestrator serve`: the HTTP API, LiveKit webhook receiver, dashboard and metrics, until
SIGINT or SIGTERM, which close it cleanly."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from orchestrator.cli.output import Output
from orchestrator.errors import ConfigError
from orchestrator.settings import Settings, load_settings


def run_serve(args: argparse.Namespace, out: Output) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        out.error(str(exc))
        return 2
    asyncio.run(_serve_until_signalled(settings, args.host, args.port))
    return 0


async def _serve_until_signalled(settings: Settings, host: str | None, port: int | None) -> None:
    from orchestrator.http import serve

    task = asyncio.ensure_future(serve(settings, host=host, port=port))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
