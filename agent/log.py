"""structlog set-up for the agent.

Events are handed to the standard `logging` module, so they come out through livekit-agents'
own handlers: JSON lines with `start`, colours with `dev`, and from a job process through its
log queue to the worker, carrying the job's log context fields. A redaction step keeps job
metadata, tokens and secrets out of every line.
"""

from __future__ import annotations

from typing import Any

import structlog

from tasks.redaction import redact

LOGGER_NAME = "lkd.agent"


def configure() -> None:
    """Route structlog through `logging`; safe to call more than once per process."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            redact,
            structlog.stdlib.render_to_log_kwargs,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(**bound: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(LOGGER_NAME, **bound)
    return logger
