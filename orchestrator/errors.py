"""The orchestrator's errors: every one it raises on purpose is an OrchestratorError."""

from __future__ import annotations

from pydantic import ValidationError

from tasks.validation import problems


class OrchestratorError(Exception):
    """Base of every error the orchestrator raises on purpose."""


class ConfigError(OrchestratorError):
    """A setting is missing or wrong; the message names the variable and what to put there."""


class LiveKitError(OrchestratorError):
    """A LiveKit API call failed. `retryable` says whether trying again may succeed."""

    def __init__(self, message: str, *, code: str, status: int | None, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.retryable = retryable


def describe_validation(exc: ValidationError, what: str) -> str:
    """A validation error as one line a person can act on, naming every bad field."""
    return f"invalid {what}: " + problems(exc, whole=what)
