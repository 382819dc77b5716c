"""The agent as a real worker process (`python -m agent start`), and how tests watch it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
_HTTP_PORT = re.compile(r"HTTP server listening on .*:(\d+)$")


class AgentWorker:
    """One `python -m agent start` process; its JSON log lines are read from a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **env}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._http_port: int | None = None

    def start(self) -> AgentWorker:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "start", "--log-level", "INFO"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its job processes share its process group
            )
        return self

    async def stop(self) -> None:
        """SIGTERM the worker's process group, SIGKILL it if still there after 5 s."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def kill(self) -> None:
        """SIGKILL the worker and its job processes at once, as a machine that dies."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (non-JSON lines are skipped)."""
        records = []
        for line in self.output.splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def find(self, message: str, **fields: Any) -> list[dict[str, Any]]:
        """Log records with this message whose fields have these values."""
        return [
            r
            for r in self.lines()
            if r.get("message") == message and all(r.get(k) == v for k, v in fields.items())
        ]

    def assert_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"the agent worker exited ({self.proc.returncode}):\n{self.output[-4000:]}")

    async def wait_registered(self, agent_name: str, timeout_s: float = 60.0) -> str:
        """The worker id, once the worker logged its registration under `agent_name`."""

        def registered() -> str | None:
            self.assert_alive()
            found = self.find("registered with LiveKit: dispatches must use this agent_name")
            if found and found[-1].get("agent_name") == agent_name:
                return str(found[-1]["worker_id"])
            return None

        result: str = await eventually(registered, timeout_s=timeout_s, what="registration")
        return result

    @property
    def http_port(self) -> int:
        if self._http_port is None:
            for record in self.lines():
                match = _HTTP_PORT.match(str(record.get("message", "")))
                if match:
                    self._http_port = int(match.group(1))
                    break
            else:
                raise AssertionError("the worker did not log its health port")
        return self._http_port

    async def active_jobs(self) -> int:
        """Jobs the worker runs, from its health endpoint (`GET /worker`)."""
        url = f"http://127.0.0.1:{self.http_port}/worker"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            response.raise_for_status()
            info = await response.json()
        return int(info.get("active_jobs", 0))

    async def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Until every job process of the worker has exited."""

        async def idle() -> bool:
            self.assert_alive()
            return await self.active_jobs() == 0

        await eventually(idle, timeout_s=timeout_s, what="the worker's jobs to exit")

    async def wait_log(
        self, message: str, timeout_s: float = 30.0, **fields: Any
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            self.assert_alive()
            records = self.find(message, **fields)
            return records[-1] if records else None

        record: dict[str, Any] = await eventually(
            found, timeout_s=timeout_s, what=f"log {message!r} {fields}"
        )
        return record
