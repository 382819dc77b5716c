"""`orchestrator <command>` (or `python -m orchestrator`): the operator's command line.

Exit codes: 0 done; 1 not found, or a doctor check failed; 2 wrong usage or settings, or a
service that cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from orchestrator import logs
from orchestrator.cli.exits import EXIT_OK, EXIT_USAGE, UsageError
from orchestrator.cli.output import Output
from orchestrator.errors import ConfigError
from orchestrator.settings import load_client_settings

Command = Callable[[argparse.Namespace, Output, Any], Awaitable[int]]


def _count(text: str) -> int:
    """An argparse type: a whole number from 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def _port(text: str) -> int:
    """An argparse type: a TCP port (0 picks a free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: use 0 to 65535")
    return value


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong command line is one line on stderr (with the help to look at),
    as every other mistake is, not argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="orchestrator",
        description="Operate the LiveKit agent dispatch orchestrator.",
        epilog="Settings come from the environment (README: Configuration).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("dispatch", help="enqueue a dispatch event (one agent for a room)")
    p.add_argument("--room", help="the LiveKit room")
    p.add_argument("--event-id", help="idempotency key (default: a new one)")
    p.add_argument("--agent-name", help="default: the orchestrator's AGENT_NAME")
    p.add_argument("--metadata", help="the payload, a JSON object")
    p.add_argument("--meta", action="append", metavar="NAME=VALUE", help="a payload field")
    p.add_argument("--event", metavar="FILE", help="a DispatchRequest as JSON ('-': stdin)")
    p.add_argument("--expires-in-s", type=float, help="drop the event if not dispatched by then")
    p.add_argument("--delay-s", type=float, help="dispatch no sooner than this")
    p.add_argument(
        "--priority", type=int, help="place in line when the agents are full: higher first"
    )
    p.add_argument(
        "--restart-policy",
        choices=["on_failure", "never"],
        help="whether a dead agent may be replaced (default on_failure, as LiveKit's)",
    )
    p.add_argument("--wait-s", type=float, default=0, help="wait this long for the outcome")
    _json_flag(p)

    p = sub.add_parser("end", help="end a session: withdraw its agent, or delete its room")
    p.add_argument("session_id", nargs="?")
    p.add_argument("--room")
    p.add_argument("--delete-room", action="store_true", help="everyone leaves, not just the agent")
    p.add_argument("--reason", default="ended from the command line")
    _json_flag(p)

    p = sub.add_parser("session", help="one session, by id or by room")
    p.add_argument("session_id", nargs="?")
    p.add_argument("--room", help="the room's newest session")
    _json_flag(p)

    p = sub.add_parser("sessions", help="recent sessions, newest first")
    p.add_argument("--status", help="claimed, dispatched, assigned, ending, completed, ...")
    p.add_argument("--agent-name")
    p.add_argument("--since", help="90s, 10m, 2h, 1d, or an ISO time")
    p.add_argument("--limit", type=_count, default=50)
    p.add_argument("--live", action="store_true", help="only sessions not yet ended")
    _json_flag(p)

    p = sub.add_parser("results", help="session reports from the results stream")
    p.add_argument("--count", type=_count, default=20, help="how many recent reports to show")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new reports")
    p.add_argument("--group", help="read as this consumer group, acknowledging each report")
    p.add_argument("--consumer", help="consumer name in --group (default: the host name)")
    p.add_argument(
        "--new-only", action="store_true", help="a new --group starts at new reports, not at 0"
    )
    _json_flag(p)

    p = sub.add_parser("dead-letters", help="failed dispatches and rejected jobs; replay")
    p.add_argument("action", nargs="?", choices=["list", "replay"], default="list")
    p.add_argument("entry_id", nargs="?", help="the entry to replay")
    p.add_argument("--count", type=_count, default=20)
    p.add_argument("--payload", action="store_true", help="show the kept payloads (personal data!)")
    _json_flag(p)

    p = sub.add_parser("token", help="a join token for a person to enter a room")
    p.add_argument("--room", required=True, help="the LiveKit room")
    p.add_argument("--identity", required=True, help="who joins; unique within the room")
    p.add_argument("--name", help="the name others see")
    p.add_argument("--metadata", help="free text (often JSON) others in the room can read")
    p.add_argument("--attribute", action="append", metavar="NAME=VALUE", help="an attribute")
    p.add_argument("--ttl-s", type=int, default=3600, help="how long it can be used to join")
    p.add_argument("--no-publish", action="store_true", help="listen only: publish nothing")
    _json_flag(p)

    p = sub.add_parser("serve", help="run the HTTP API, webhook receiver and dashboard")
    p.add_argument("--host", help="default: LKD_HTTP_HOST")
    p.add_argument("--port", type=_port, help="default: LKD_HTTP_PORT")

    p = sub.add_parser("doctor", help="check Redis, workers, LiveKit and the agent workers")
    p.add_argument("--agent-timeout-s", type=float, default=10.0)
    p.add_argument("--no-probe", action="store_true", help="skip the test dispatch")
    _json_flag(p)

    p = sub.add_parser("demo", help="run everything locally with sample events")
    p.add_argument("--duration-s", type=float, help="stop by itself after this long")
    p.add_argument("--event-interval-s", type=float, default=4.0)
    p.add_argument("--http-port", type=_port, default=0, help="default: a free port")
    p.add_argument("--log-dir", help="where the run's directory goes (default: the temp dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure()  # to stderr: stdout stays the command's answer
    try:
        client = load_client_settings()
    except ConfigError as exc:
        Output().error(str(exc))
        return EXIT_USAGE
    json_mode = bool(getattr(args, "json", False))
    out = Output(colour=None if not client.no_color else False, json_mode=json_mode)
    if args.command == "serve":
        from orchestrator.cli.serve import run_serve

        return run_serve(args, out)
    if args.command == "doctor":
        from orchestrator.cli.doctor_command import run_doctor

        return run_doctor(args, out, client)
    if args.command == "token":
        from orchestrator.cli.token import run_token

        try:
            return run_token(args, out)
        except (UsageError, ConfigError) as exc:
            out.error(str(exc))
            return EXIT_USAGE
    if args.command == "demo":
        from orchestrator.demo.run import run_demo

        return run_demo(args, out, client)
    return _run_redis_command(args, out, client.redis_url)


def _command(name: str) -> Command:
    from orchestrator.cli import dead_letters, results, sessions

    table: dict[str, Command] = {
        "dispatch": sessions.cmd_dispatch,
        "end": sessions.cmd_end,
        "session": sessions.cmd_session,
        "sessions": sessions.cmd_sessions,
        "dead-letters": dead_letters.cmd_dead_letters,
        "results": results.cmd_results,
    }
    return table[name]


def _run_redis_command(args: argparse.Namespace, out: Output, redis_url: str) -> int:
    from orchestrator.cli.connect import RedisUnreachable, open_redis

    if args.command == "dead-letters" and args.action == "replay" and not args.entry_id:
        out.error("dead-letters replay needs the entry id (see `orchestrator dead-letters`)")
        return EXIT_USAGE

    async def run() -> int:
        redis = await open_redis(redis_url)
        try:
            return await _command(args.command)(args, out, redis)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(run())
    except (UsageError, RedisUnreachable) as exc:
        out.error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def entry_point() -> None:
    """The `orchestrator` console script."""
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
