"""Errors of the HTTP API as JSON answers: a stable code, a reason a person can act on, and
for invalid input every invalid field. Never a stack trace."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from pydantic import ValidationError
from redis.exceptions import RedisError

from tasks.redaction import redis_error_text

log = structlog.get_logger("orchestrator.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """Raised by a handler to answer `status` with {"error": code, "reason": reason, ...}."""

    def __init__(self, status: int, code: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.extra = extra

    def response(self) -> web.Response:
        body = {"error": self.code, "reason": self.reason, **self.extra}
        return web.json_response(body, status=self.status, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def not_found(reason: str) -> ApiError:
    return ApiError(404, "not_found", reason)


def invalid(exc: ValidationError, what: str = "body") -> ApiError:
    """422 naming every invalid field with pydantic's message (never the input's value)."""
    fields = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or f"({what})"
        message = error["msg"].removeprefix("Value error, ")
        fields.append({"field": where, "message": message, "type": error["type"]})
    names = ", ".join(f["field"] for f in fields)
    count = len(fields)
    reason = f"invalid {what}: {count} invalid field{'s' if count != 1 else ''} ({names})"
    return ApiError(422, "invalid_request", reason, fields=fields)


def _redis_problem(exc: RedisError) -> str:
    return f"{type(exc).__name__}: {redis_error_text(exc)}"


_HTTP_CODES = {
    404: ("not_found", "no such endpoint: see /openapi.json"),
    405: ("method_not_allowed", "method not allowed on this endpoint: see /openapi.json"),
    413: ("too_large", "request body too large"),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error answer; log server-side failures and writes."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        return exc.response()
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        code, reason = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
        return ApiError(exc.status, code, reason).response()
    except (HttpProcessingError, RequestPayloadError) as exc:
        # The body could not be read as sent (Content-Encoding that does not match it, ...).
        status = 400
        reason = f"the request body could not be read ({type(exc).__name__}): check its encoding"
        return ApiError(400, "bad_body", reason).response()
    except RedisError as exc:
        status = 503
        log.error("redis unavailable", path=request.path, error=_redis_problem(exc))
        return ApiError(503, "redis_unavailable", "Redis is unreachable: try again").response()
    except Exception:
        log.exception("request failed", method=request.method, path=request.path)
        return ApiError(500, "internal", "internal error: see the service's log").response()
    finally:
        if request.method != "GET" or status >= 500:
            log.info(
                "http request",
                method=request.method,
                path=request.path,
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
