"""How a command ends: its exit code, and the error for a command line that is wrong."""

from __future__ import annotations

EXIT_OK = 0
EXIT_NOT_FOUND = 1
"""Not found, or a doctor check failed."""
EXIT_USAGE = 2
"""Wrong usage or settings, or a service that cannot be reached."""


class UsageError(Exception):
    """The command line was wrong; the message says which option and what it takes."""
