"""The dashboard: one static page (plain HTML, CSS and JS, no build step, nothing fetched
from elsewhere) that polls /v1/overview.

The page itself needs no token, since it holds no data; its data calls send the API token as a
bearer header. The page asks for the token once and keeps it in the tab's sessionStorage
(gone when the tab closes); a link `/#token=...` hands it over without a prompt, and the
fragment never reaches the server or its logs. When LKD_API_TOKEN is unset the API is
read-only and the page works without a token, replay excepted.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from aiohttp import web

from orchestrator.http.api import dead_letter_page, parse_query, reply, results_page
from orchestrator.http.schemas import (
    DispatchPoint,
    LineView,
    Overview,
    OverviewQuery,
    session_view,
)
from orchestrator.http.service import of
from orchestrator.http.spec import Route
from orchestrator.store import line, queries

STATIC_DIR = Path(__file__).parent / "static"
MAX_LIVE_SHOWN = 200
MAX_POINTS = 2000

_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=_HEADERS)


async def overview(request: web.Request) -> web.Response:
    q = parse_query(request, OverviewQuery)
    svc = of(request)
    now = int(time.time() * 1000)
    live, live_count = await queries.live_sessions(svc.redis, limit=MAX_LIVE_SHOWN)
    times = await queries.dispatch_times(
        svc.redis, since_ms=now - q.window_s * 1000, limit=MAX_POINTS
    )
    points = [DispatchPoint(at_ms=t.at_ms, ms=t.ms, room=t.room) for t in times]
    worker_ok, _ = await svc.worker_check()
    answer = Overview(
        now_ms=now,
        queue_depth=await queries.queue_depth(svc.redis),
        live_count=live_count,
        lines=[
            LineView(**asdict(state))
            for state in await line.all_lines(svc.redis, svc.store.line, now)
        ],
        live_sessions=[session_view(s) for s in live],
        time_to_dispatch=sorted(points, key=lambda p: p.at_ms),
        reports=await results_page(request, q.reports),
        dead_letters=await dead_letter_page(request, q.dead_letters),
        worker_ok=worker_ok,
    )
    return reply(answer)


def add_static(app: web.Application) -> None:
    """Serve the page's assets under /static/ (no directory listing)."""
    app.router.add_static("/static/", STATIC_DIR, show_index=False, append_version=False)


ROUTES = [
    Route("GET", "/", page, "The dashboard page", "public", tag="dashboard",
          media_type="text/html"),
    Route("GET", "/v1/overview", overview, "Everything the dashboard shows", "read",
          tag="dashboard", query=OverviewQuery, answer=Overview),
]  # fmt: skip
