"""`python -m livekit_sim --port 7880`: run the sim as a process, like `livekit-server --dev`.

Keys come from `--keys` or LIVEKIT_KEYS ("key: secret" pairs separated by commas, the real
server's format), else `--api-key/--api-secret`, else the dev pair devkey / secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal

from livekit_sim.server import (
    DEFAULT_DEPARTURE_TIMEOUT_S,
    DEFAULT_EMPTY_TIMEOUT_S,
    DEFAULT_MISSING_ROOM_DELAY_S,
    DEFAULT_PEER_CONNECTION_TIMEOUT_S,
    DEV_API_KEY,
    DEV_API_SECRET,
    LiveKitSim,
)


def parse_keys(text: str) -> dict[str, str]:
    """ "k1: s1, k2: s2" -> {"k1": "s1", "k2": "s2"} (LIVEKIT_KEYS format)."""
    keys: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, secret = pair.partition(":")
        if not sep or not key.strip() or not secret.strip():
            raise ValueError("keys must look like 'key: secret[, key2: secret2]'")
        keys[key.strip()] = secret.strip()
    return keys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m livekit_sim", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7880)
    p.add_argument("--api-key", default=DEV_API_KEY)
    p.add_argument("--api-secret", default=DEV_API_SECRET)
    p.add_argument("--keys", default=os.environ.get("LIVEKIT_KEYS", ""))
    p.add_argument(
        "--webhook-url",
        action="append",
        default=[],
        help="POST signed webhooks here (repeatable)",
    )
    p.add_argument("--webhook-api-key", default=None, help="key that signs webhooks")
    p.add_argument("--empty-timeout-s", type=float, default=DEFAULT_EMPTY_TIMEOUT_S)
    p.add_argument("--departure-timeout-s", type=float, default=DEFAULT_DEPARTURE_TIMEOUT_S)
    p.add_argument(
        "--peer-connection-timeout-s", type=float, default=DEFAULT_PEER_CONNECTION_TIMEOUT_S
    )
    p.add_argument("--missing-room-delay-s", type=float, default=DEFAULT_MISSING_ROOM_DELAY_S)
    p.add_argument("--log-level", default="INFO")
    return p


async def serve(args: argparse.Namespace) -> None:
    keys = parse_keys(args.keys) if args.keys else {args.api_key: args.api_secret}
    api_key, api_secret = next(iter(keys.items()))
    sim = LiveKitSim(
        host=args.host,
        port=args.port,
        api_key=api_key,
        api_secret=api_secret,
        extra_keys=keys,
        webhook_urls=args.webhook_url,
        webhook_api_key=args.webhook_api_key,
        empty_timeout_s=args.empty_timeout_s,
        departure_timeout_s=args.departure_timeout_s,
        peer_connection_timeout_s=args.peer_connection_timeout_s,
        missing_room_delay_s=args.missing_room_delay_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        logging.getLogger("livekit_sim").info("livekit_sim serving on %s", sim.url)
        print(f"livekit_sim listening on {sim.url}", flush=True)
        await stop.wait()


def main() -> None:
    args = build_parser().parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
