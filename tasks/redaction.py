"""The one redaction step every part's logs go through: job metadata (it may carry personal
data), tokens and secrets never reach a log line. Also the one place that takes the command
out of a Redis error's text, and the password out of a Redis URL."""

from __future__ import annotations

import functools
import re
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[redacted]"
_SECRET_KEYS = re.compile(
    r"(metadata|payload|token|secret|password|authorization|api_key|raw)", re.I
)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


@functools.cache
def _secret_key(key: str) -> bool:
    return key != "event" and _SECRET_KEYS.search(key) is not None


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop values of keys that may carry personal data or credentials,
    and mask JWTs that slipped into other values."""
    for key, value in list(event.items()):
        if _secret_key(key):
            event[key] = REDACTED
        elif isinstance(value, str) and "eyJ" in value:  # every JWT starts so
            event[key] = _JWT.sub(REDACTED, value)
    return event


_PIPELINE_COMMAND = re.compile(r"^Command # (\d+) \(.*\) of pipeline caused error: ", re.S)


def redis_error_text(exc: BaseException) -> str:
    """A Redis error's text without the command that caused it: redis-py quotes a failed
    pipeline command with its arguments (a job, with its metadata), and the text reaches
    logs, HTTP answers and producers' exceptions."""
    return _PIPELINE_COMMAND.sub(r"Command # \1 of pipeline caused error: ", str(exc))


def safe_url(url: str) -> str:
    """`url` with any password replaced by `***`, fit for logs and messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not even a URL: show none of it, it may hold a password
        return "(not a URL)"
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
