"""The orchestrator: `arq orchestrator.WorkerSettings` runs it."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Built on first access so importing the package (CLI, tests) needs no environment.
    if name == "WorkerSettings":
        from orchestrator.worker import build_worker_settings_class

        value = build_worker_settings_class()
        globals()[name] = value
        return value
    raise AttributeError(name)
