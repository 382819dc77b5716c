"""The one place that decides what a LiveKit failure means: a LiveKitError with a message a
person can act on, and whether trying again may succeed."""

from __future__ import annotations

import asyncio

import aiohttp
from livekit.api import ServerError

from orchestrator.errors import LiveKitError

# Twirp codes that describe a passing condition on the server side.
TRANSIENT_CODES = frozenset(
    {"unavailable", "resource_exhausted", "internal", "deadline_exceeded", "aborted", "canceled"}
)


def classify(exc: BaseException, call: str) -> LiveKitError:
    """Turn whatever a LiveKit call raised into a LiveKitError with an actionable message."""
    if isinstance(exc, LiveKitError):
        return exc
    if isinstance(exc, ServerError):
        code, status = exc.code, exc.status
        if status == 401 or code == "unauthenticated":
            detail = exc.message or "invalid token"
            return LiveKitError(
                f"LiveKit rejected the credentials on {call} (HTTP 401: {detail}): check "
                "LIVEKIT_API_KEY and LIVEKIT_API_SECRET match a key of the server",
                code="unauthenticated",
                status=status,
                retryable=False,
            )
        retryable = code in TRANSIENT_CODES or status >= 500 or status in (408, 429)
        return LiveKitError(
            f"LiveKit {call} failed: {code} (HTTP {status}) {exc.message}".rstrip(),
            code=code,
            status=status,
            retryable=retryable,
        )
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return LiveKitError(
            f"LiveKit {call} timed out", code="timeout", status=None, retryable=True
        )
    if isinstance(exc, aiohttp.ClientError | ConnectionError | OSError):
        return LiveKitError(
            f"LiveKit {call} could not reach the server ({type(exc).__name__}: {exc}): "
            "is LIVEKIT_URL right and the server up?",
            code="connection",
            status=None,
            retryable=True,
        )
    return LiveKitError(
        f"LiveKit {call} failed unexpectedly ({type(exc).__name__}: {exc})",
        code="unknown",
        status=None,
        retryable=False,
    )
