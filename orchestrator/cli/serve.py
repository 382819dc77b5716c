"""`orchestrator serve`: the HTTP API, LiveKit webhook receiver, dashboard and metrics, until
SIGINT or SIGTERM, which close it cleanly."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from redis.exceptions import RedisError

from orchestrator.cli.connect import RedisUnreachable, open_redis
from orchestrator.cli.exits import EXIT_OK, EXIT_USAGE
from orchestrator.cli.output import Output
from orchestrator.errors import ConfigError
from orchestrator.settings import Settings, load_settings
from tasks.redaction import safe_url


def run_serve(args: argparse.Namespace, out: Output) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        out.error(str(exc))
        return EXIT_USAGE
    host = args.host or settings.http_host
    port = args.port if args.port is not None else settings.http_port
    try:
        asyncio.run(_check_redis(settings.redis_url))
    except RedisUnreachable as exc:
        out.error(str(exc))
        return EXIT_USAGE
    try:
        asyncio.run(_serve_until_signalled(settings, host, port))
    except (RedisError, OSError) as exc:
        if isinstance(exc, RedisError) or exc.errno is None:
            out.error(
                f"cannot reach Redis at {safe_url(settings.redis_url)} ({type(exc).__name__}): "
                "is it running, and is REDIS_URL right?"
            )
        else:
            out.error(
                f"cannot listen on {host}:{port}: {exc.strerror} (another process there? "
                "choose another with --port or LKD_HTTP_PORT)"
            )
        return EXIT_USAGE
    return EXIT_OK


async def _check_redis(url: str) -> None:
    """Fail at once, in one line, when Redis cannot be reached as the service starts."""
    redis = await open_redis(url)
    await redis.aclose()


async def _serve_until_signalled(settings: Settings, host: str | None, port: int | None) -> None:
    from orchestrator.http import serve

    task = asyncio.ensure_future(serve(settings, host=host, port=port))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
