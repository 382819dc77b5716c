"""`python -m agent start|dev [options]`: run the agent worker.

This forwards to livekit-agents' supported command line, `python -m livekit.agents start
agent/server.py [--dev]` (its deprecated `cli.run_app` is not used), so the options and
environment are livekit-agents' own: `--log-level`, `--log-format json|colored`, `--url`,
`--api-key`, `--api-secret`, and LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET.
"""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = """usage: python -m agent {start,dev} [livekit-agents options]

  start   run the worker in production mode (JSON logs, health port 8081, drains on SIGTERM)
  dev     run it in development mode (coloured logs, debug level, free health port)

options (livekit-agents'): --log-level LEVEL  --log-format {json,colored}
                           --url URL  --api-key KEY  --api-secret SECRET
environment: LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET, AGENT_NAME, REDIS_URL,
             AGENT_SESSION_HANDLER, ... (README: "Writing a session handler")"""

SERVER_FILE = Path(__file__).with_name("server.py")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in ("start", "dev"):
        print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2

    from agent.errors import AgentError

    try:  # the settings and the session handler are checked here, with a readable error
        import agent.server  # noqa: F401
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from livekit.agents.__main__ import main as livekit_main

    forwarded = ["start", str(SERVER_FILE), *rest]
    if command == "dev":
        forwarded.append("--dev")
    return livekit_main(forwarded)


if __name__ == "__main__":
    sys.exit(main())
