"""Fixtures for the command line: the orchestrator's sim, settings, Redis and workers, and
`cli(...)`, which runs `python -m orchestrator ...` as a user would."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from livekit_sim import LiveKitSim
from orchestrator.settings import Settings
from tests.orchestrator.conftest import (  # noqa: F401  (fixtures)
    AGENT,
    API_KEY,
    API_SECRET,
    agent_worker,
    arq_redis,
    orchestrator,
    run_worker,
    settings,
    sim,
)

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Awaitable[Ran]]


def cli_env(config: Settings, **overrides: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LKD_", "LIVEKIT_", "AGENT_", "REDIS_", "NO_COLOR"))
    }
    env.update(
        REDIS_URL=config.redis_url,
        LIVEKIT_URL=config.livekit_url,
        LIVEKIT_API_KEY=config.livekit_api_key,
        LIVEKIT_API_SECRET=config.livekit_api_secret.get_secret_value(),
        AGENT_NAME=config.agent_name,
        PYTHONPATH=str(REPO),
    )
    env.update(overrides)
    return env


async def run_cli(env: dict[str, str], *args: str, stdin: bytes | None = None) -> Ran:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", *args,
        env=env, cwd=REPO,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), CLI_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def cli(settings: Settings, sim: LiveKitSim) -> Cli:  # noqa: F811
    """`await cli("sessions", "--json", NO_COLOR="1")`: args, then environment overrides."""

    async def call(*args: str, stdin: bytes | None = None, **env: str) -> Ran:
        return await run_cli(cli_env(settings, **env), *args, stdin=stdin)

    return call
