"""Helpers for tests that run agent workers as separate processes against the sim."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.waiting import eventually as wait_for

APPS_DIR = Path(__file__).parent
T = TypeVar("T")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, None while it does not exist yet."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data


class WorkerProcess:
    """One `recording_worker.py` process (in its own process group, so its job processes too)."""

    def __init__(self, out_dir: Path, label: str, env: dict[str, str]) -> None:
        self.out_dir = out_dir
        self.label = label
        self.log_path = out_dir / f"worker-{label}.log"
        full_env = {**os.environ, **env, "SIM_TEST_OUT_DIR": str(out_dir), "SIM_TEST_LABEL": label}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(APPS_DIR / "recording_worker.py")],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def registered(self, timeout_s: float = 30.0) -> str:
        """The worker id, once the worker registered; fails if the process exits first."""

        def probe() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.label} exited: {self.log_path.read_text()}")
            info = read_json(self.out_dir / f"worker-{self.label}.json")
            return str(info["worker_id"]) if info else None

        return await wait_for(probe, timeout_s=timeout_s, what=f"worker {self.label} to register")

    async def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it has not exited within 10 s."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(pytest.fail.Exception):
                await wait_for(lambda: self.proc.poll() is not None, timeout_s=10, what="exit")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
