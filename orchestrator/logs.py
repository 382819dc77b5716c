"""structlog set-up: JSON lines in production, colours in a terminal, and a redaction step
that keeps job metadata, tokens and secrets out of every line."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from tasks.redaction import redact


class HideJobArguments(logging.Filter):
    """arq logs each job's start with its arguments (our events, with their metadata):
    keep the line, drop the arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "→" in record.msg and len(record.args or ()) == 4:
            elapsed, ref, _, extra = record.args  # type: ignore[misc]
            record.args = (elapsed, ref, "…", extra)
        return True


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    arq_logger = logging.getLogger("arq.worker")
    # arq's two lines per job repeat what our own step logs say and cost ~4 % of a dispatch;
    # its warnings and errors still show.
    arq_logger.setLevel(logging.WARNING)
    if not any(isinstance(f, HideJobArguments) for f in arq_logger.filters):
        arq_logger.addFilter(HideJobArguments())
    as_json = not sys.stderr.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
