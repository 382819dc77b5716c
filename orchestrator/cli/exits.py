"""How a command ends: its exit code, and the error for a command line that is wrong."""

from __future__ import annotations

from orchestrator.errors import OrchestratorError

EXIT_OK = 0
EXIT_FAILED = 1
"""Not found, a doctor check failed, or a process the demo runs exited."""
EXIT_USAGE = 2
"""Wrong usage or settings, or a service that cannot be reached."""


class UsageError(OrchestratorError):
    """The command line was wrong; the message says which option and what it takes."""
