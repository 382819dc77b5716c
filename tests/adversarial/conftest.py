"""The whole service as processes, for trying every door with bad input: Redis (AOF), the
LiveKit sim, the HTTP service and two orchestrator workers, each logging to a file of its
own. One set per test session: the doors are tried one after the other against it, and the
last test reads every log."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from orchestrator.demo.local_redis import LocalRedis, free_port
from orchestrator.demo.processes import Supervisor

REPO = Path(__file__).resolve().parents[2]
API_KEY = "doors-key"
API_SECRET = "doors-secret-0123456789-abcdefghijklmnop"
API_TOKEN = "doors-api-token-3f9a7c21e8b64d05"
PHONE = "+44 7700 900461"
"""A marker of personal data: it travels in events' metadata and must reach no log line."""


@dataclass
class Doors:
    url: str
    """The HTTP service."""
    redis_url: str
    sim_url: str
    env: dict[str, str]
    """The environment the processes run with (the CLI's too)."""
    supervisor: Supervisor


def _wait(ready: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout_s} s")
        time.sleep(0.1)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="session")
def doors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Doors]:
    logs = tmp_path_factory.mktemp("doors")
    redis = LocalRedis(appendonly=True).start()
    supervisor = Supervisor(logs)
    sim_port, http_port = free_port(), free_port()
    http_url = f"http://127.0.0.1:{http_port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LKD_", "LIVEKIT_"))},
        "PYTHONPATH": str(REPO),
        "REDIS_URL": redis.url,
        "LIVEKIT_URL": f"http://127.0.0.1:{sim_port}",
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
        "LKD_API_TOKEN": API_TOKEN,
        "LKD_ASSIGNMENT_CHECK_DELAY_S": "600",  # no agent here: no checks to watch
        "LKD_JOB_TIMEOUT_S": "10",
    }
    try:
        supervisor.start(
            "livekit",
            [sys.executable, "-m", "livekit_sim", "--port", str(sim_port),
             "--keys", f"{API_KEY}: {API_SECRET}", "--webhook-url", f"{http_url}/livekit/webhook",
             "--log-level", "WARNING"],
            env,
        )  # fmt: skip
        _wait(lambda: _answers(env["LIVEKIT_URL"] + "/_sim/state"), 30, "the sim")
        supervisor.start(
            "http", [sys.executable, "-m", "orchestrator", "serve", "--port", str(http_port)], env
        )
        for n in range(2):
            supervisor.start(
                f"worker-{n}", [sys.executable, "-m", "arq", "orchestrator.WorkerSettings"], env
            )
        _wait(lambda: _answers(http_url + "/healthz"), 60, "the HTTP service and a worker")
        yield Doors(http_url, redis.url, env["LIVEKIT_URL"], env, supervisor)
    finally:
        import asyncio

        asyncio.run(supervisor.stop_all([["http"], ["worker-0", "worker-1"], ["livekit"]]))
        redis.stop()
