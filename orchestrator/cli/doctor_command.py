"""`orchestrator doctor`: runs the checks of `orchestrator.doctor` and prints one line each,
with the fix under every check that is not ok."""

from __future__ import annotations

import argparse
import asyncio

from orchestrator.cli.exits import EXIT_FAILED, EXIT_OK
from orchestrator.cli.output import Output
from orchestrator.doctor import Check, run_checks
from orchestrator.errors import ConfigError
from orchestrator.settings import ClientSettings, Settings, load_settings

_LABELS = {"ok": " ok ", "warn": "warn", "fail": "FAIL", "skip": "skip"}
_COLOURS = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


def render(out: Output, checks: list[Check]) -> None:
    width = max(len(c.name) for c in checks)
    for check in checks:
        label = out.paint(f"[{_LABELS[check.status]}]", _COLOURS[check.status])
        out.line(f"{label} {check.name.ljust(width)}  {check.detail}")
        if check.fix and check.status in ("warn", "fail"):
            out.line(f"       {' ' * width}  {out.paint('fix:', 'bold')} {check.fix}")


def run_doctor(args: argparse.Namespace, out: Output, client: ClientSettings) -> int:
    settings: Settings | None = None
    error: str | None = None
    try:
        settings = load_settings()
    except ConfigError as exc:
        error = str(exc)
    redis_url = settings.redis_url if settings else client.redis_url
    checks = asyncio.run(
        run_checks(
            redis_url,
            settings,
            settings_error=error,
            agent_timeout_s=args.agent_timeout_s,
            probe=not args.no_probe,
        )
    )
    failed = any(c.status == "fail" for c in checks)
    if out.json_mode:
        out.json({"ok": not failed, "checks": [c.as_dict() for c in checks]})
    else:
        render(out, checks)
    return EXIT_FAILED if failed else EXIT_OK
