"""structlog set-up: JSON lines in production, colours in a terminal, and a redaction step
that keeps job metadata, tokens and secrets out of every line."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from tasks.redaction import redact


class HideJobArguments(logging.Filter):
    """arq logs each job's start with its arguments (our events, with their metadata):
    keep the line, drop the arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "→" in record.msg and len(record.args or ()) == 4:
            elapsed, ref, _, extra = record.args  # type: ignore[misc]
            record.args = (elapsed, ref, "…", extra)
        return True


class _UtcTimestamp:
    """structlog processor: `timestamp` as ISO 8601 UTC with microseconds, as structlog's
    TimeStamper(fmt="iso", utc=True) writes it, formatting each second's date once."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # a second and its text, replaced together

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> Any:
        now = time.time()
        second, text = self._second
        if int(now) != second:
            second = int(now)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        event["timestamp"] = f"{text}.{int((now - second) * 1e6):06d}Z"
        return event


def _not_json(value: Any) -> Any:
    """What structlog's JSONRenderer writes for a value JSON cannot hold."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


# Built once: structlog's JSONRenderer calls json.dumps with options, which builds an encoder
# for every line. Its output is the same: json.dumps' separators, the same fallback.
_JSON_LINE = json.JSONEncoder(default=_not_json)


def _render_json(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    return _JSON_LINE.encode(event)


class HideBadRequests(logging.Filter):
    """aiohttp logs a request it could not parse with its exception, whose text quotes the
    raw request line or header it choked on (a bearer token, a phone number): keep that it
    happened and why, drop what it quoted."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError | RequestPayloadError):
            # RequestPayloadError: a body it could not read (its Content-Encoding lied),
            # met again when it drains the request after our answer.
            record.msg = "bad HTTP request rejected (%s)"
            record.args = (type(error).__name__,)
            record.exc_info = None
        return True


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    """Every line this process writes goes through one pipeline: ours (structlog) and every
    library's (arq, aiohttp, asyncio, warnings, an uncaught exception), one JSON object per
    line in production, with job metadata, tokens and secrets redacted. Safe to call again:
    arq sets up its own plain-text logging after it loads WorkerSettings."""
    as_json = not sys.stderr.isatty() if json is None else json
    renderer: Any = _render_json if as_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _UtcTimestamp(),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_standard_logging(renderer, level)


def _route_standard_logging(renderer: Any, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                _UtcTimestamp(),
                redact,
                structlog.processors.format_exc_info,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    arq = logging.getLogger("arq")
    arq.handlers = []  # its plain-text handler, from arq's own set-up
    arq.propagate = True
    arq_worker = logging.getLogger("arq.worker")
    # arq's two lines per job repeat what our own step logs say and cost ~4 % of a dispatch;
    # its warnings and errors still show.
    arq_worker.setLevel(logging.WARNING)
    _add_filter(arq_worker, HideJobArguments())
    _add_filter(logging.getLogger("aiohttp.server"), HideBadRequests())
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _add_filter(logger: logging.Logger, added: logging.Filter) -> None:
    if not any(isinstance(f, type(added)) for f in logger.filters):
        logger.addFilter(added)


def _log_uncaught(
    kind: type[BaseException], error: BaseException, tb: TracebackType | None
) -> None:
    logging.getLogger("orchestrator").critical("uncaught exception", exc_info=(kind, error, tb))
