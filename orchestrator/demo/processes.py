"""Child processes of the demo: each in its own process group (so a terminal's Ctrl-C reaches
only the demo, which then stops them in order) with its output in a log file; stopping one
stops its whole group, grandchildren included."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """In a child, before it runs its program (Linux): SIGTERM when the demo's thread that
    started it ends, however the demo ends (SIGKILL included), so none outlives it. Each
    child stops its own children as it stops."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ProcessExited(RuntimeError):
    """A child stopped while the demo needed it; the message ends with its log's tail."""


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            raise ProcessExited(
                f"{self.name} exited with code {self.proc.returncode}; "
                f"the end of {self.log_path}:\n{self.log_tail()}"
            )


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still there."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Supervisor:
    """Starts children and stops every one of them, whatever happens in between."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_stop_with_parent if sys.platform == "linux" else None,
            )
        child = Child(name, argv, log_path, proc)
        self.children.append(child)
        return child

    def check_all_alive(self) -> None:
        for child in self.children:
            child.check_alive()

    async def stop(self, children: Sequence[Child], grace_s: float = 8.0) -> None:
        """SIGTERM each child's group, wait for them together, SIGKILL what is left."""
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            for child in children:
                child.proc.poll()  # reap the leader so its group can empty
            if not any(group_alive(c.pid) for c in children):
                break
            await asyncio.sleep(0.05)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=5)

    async def stop_all(self, phases: Sequence[Sequence[str]] = ()) -> None:
        """Stop every child, phase by phase (names), then any child no phase names: e.g.
        the agent before the worker it reports to, and Redis last."""
        named: set[str] = set()
        for phase in phases:
            named.update(phase)
            await self.stop([c for c in self.children if c.name in phase])
        await self.stop([c for c in self.children if c.name not in named])
