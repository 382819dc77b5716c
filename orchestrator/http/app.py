"""The HTTP service: the JSON API, the LiveKit webhook receiver, health and metrics, and the
dashboard, in one aiohttp app (`orchestrator serve` runs it)."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web
from livekit import api as livekit_api

from orchestrator import logs
from orchestrator.http import api, dashboard, observe, webhooks
from orchestrator.http.errors import ApiError, Handler, error_middleware
from orchestrator.http.service import SERVICE, Service
from orchestrator.http.spec import Route, openapi
from orchestrator.settings import Settings
from orchestrator.store.line import LineConfig
from orchestrator.store.sessions import SessionStore
from tasks import create_redis

log = structlog.get_logger("orchestrator.http")

TITLE = "LiveKit agent dispatch orchestrator"
VERSION = "1"
MAX_BODY_BYTES = 1024 * 1024


def routes() -> list[Route]:
    """Every endpoint of the service, in the order the OpenAPI document lists them."""
    return [*api.ROUTES, *webhooks.ROUTES, *observe.ROUTES, *dashboard.ROUTES]


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def authorize(settings: Settings, request: web.Request, *, write: bool) -> None:
    """Raise a 401/403 ApiError unless the request may go on."""
    expected = settings.api_token
    if expected is None:
        if write:
            raise ApiError(
                403,
                "read_only",
                "LKD_API_TOKEN is not set, so the API is read-only: set it to allow writes",
            )
        return
    given = _bearer(request)
    if given is None:
        raise ApiError(
            401, "unauthorized", "missing bearer token: send Authorization: Bearer <LKD_API_TOKEN>"
        )
    # surrogateescape: a header aiohttp could not decode as UTF-8 is simply not the token.
    if not hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.get_secret_value().encode()
    ):
        raise ApiError(401, "unauthorized", "wrong bearer token")


def _guarded(route: Route, settings: Settings) -> Handler:
    if route.access == "public":
        return route.handler
    write = route.access == "write"

    async def handler(request: web.Request) -> web.StreamResponse:
        authorize(settings, request, write=write)
        return await route.handler(request)

    return handler


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    info = request.match_info.route.resource
    route = info.canonical if info is not None else "unmatched"
    if not route.startswith("/static/"):
        observe.HTTP_REQUESTS.labels(route, request.method, str(response.status)).inc()
    return response


def create_app(settings: Settings) -> web.Application:
    """The service's app. It opens its own Redis connection when it starts and closes it at
    cleanup; it needs a reachable Redis to start."""
    app = web.Application(
        middlewares=[count_requests, error_middleware], client_max_size=MAX_BODY_BYTES
    )
    table = routes()
    document = openapi(table, title=TITLE, version=VERSION)

    async def spec(request: web.Request) -> web.Response:
        return web.json_response(document)

    for route in table:
        app.router.add_route(route.method, route.path, _guarded(route, settings))
    app.router.add_get("/openapi.json", spec)
    dashboard.add_static(app)

    async def connections(app: web.Application) -> AsyncIterator[None]:
        redis = await create_redis(settings.redis_url)
        secret = settings.livekit_api_secret.get_secret_value()
        verifier = livekit_api.TokenVerifier(settings.livekit_api_key, secret)
        app[SERVICE] = Service(
            settings=settings,
            redis=redis,
            store=SessionStore(
                redis,
                retention_s=settings.session_retention_s,
                event_retention_s=settings.event_retention_s,
                line=LineConfig(
                    settings.agent_capacity, settings.agent_worker_timeout_s, settings.waiting_line
                ),
            ),
            webhook_receiver=livekit_api.WebhookReceiver(verifier),
        )
        if settings.api_token is None:
            log.warning("LKD_API_TOKEN is not set: the HTTP API is read-only and unauthenticated")
        yield
        try:
            await app[SERVICE].store.aclose()
        finally:
            await redis.aclose()

    app.cleanup_ctx.append(connections)
    return app


async def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Run the HTTP service until cancelled, on `host`:`port` (default: the settings')."""
    if not structlog.is_configured():
        logs.configure()
    runner = web.AppRunner(create_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        bind_host = host if host is not None else settings.http_host
        bind_port = port if port is not None else settings.http_port
        site = web.TCPSite(runner, bind_host, bind_port)
        await site.start()
        addresses: list[Any] = list(runner.addresses)
        shown = addresses[0][1] if addresses else bind_port
        log.info("http service listening", url=f"http://{bind_host}:{shown}/")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
