"""`python -m agent`: the command line users type, run as they would run it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.agent.worker_process import REPO

pytestmark = pytest.mark.system

FORWARDED = """
import livekit.agents.__main__ as lk
lk.main = lambda argv: print("forwarded", argv) or 0
from agent.__main__ import main
main(["start", "--log-level", "DEBUG"])
main(["dev"])
"""


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_the_commands() -> None:
    result = run("-m", "agent", "--help")
    assert result.returncode == 0
    assert "start" in result.stdout
    assert "dev" in result.stdout


def test_unknown_command_is_refused() -> None:
    result = run("-m", "agent", "serve")
    assert result.returncode == 2
    assert "unknown command 'serve'" in result.stderr


def test_start_and_dev_go_to_livekit_agents_own_cli() -> None:
    result = run("-c", FORWARDED)
    server_file = str(REPO / "agent" / "server.py")
    assert result.stdout.splitlines() == [
        f"forwarded ['start', '{server_file}', '--log-level', 'DEBUG']",
        f"forwarded ['start', '{server_file}', '--dev']",
    ]


def test_bad_settings_stop_the_start_with_the_variable_named() -> None:
    result = run("-m", "agent", "start", AGENT_MAX_SESSIONS="0")
    assert result.returncode == 2
    assert "AGENT_MAX_SESSIONS" in result.stderr
    missing = run("-m", "agent", "start", AGENT_SESSION_HANDLER="nowhere.at_all:handle")
    assert missing.returncode == 2
    assert "cannot import the session handler module 'nowhere.at_all'" in missing.stderr
