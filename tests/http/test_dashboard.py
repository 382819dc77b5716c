"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright): a
person's view of sessions appearing, reports arriving and a failed dispatch replayed."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from arq import ArqRedis
from arq.worker import Worker

from livekit_sim import LiveKitSim
from tasks import enqueue_session_report
from tasks.heartbeat import WorkerRecord, beat_worker
from tests.http.conftest import TOKEN, Service
from tests.http.test_api import call, session_in
from tests.http.test_failover import a_dead_agent_replaced
from tests.orchestrator.conftest import AGENT
from tests.orchestrator.test_dispatch import CREATE
from tests.orchestrator.test_sessions import agent_report
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed: apt-get install -y chromium",
    ),
]
WAIT_MS = 15_000


@pytest.fixture
async def page(service: Service) -> AsyncIterator[Any]:
    assert CHROMIUM is not None
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        context = await browser.new_context(viewport={"width": 1440, "height": 900})
        tab = await context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        yield tab
        await browser.close()
        assert errors == [], errors


async def dispatch(client: aiohttp.ClientSession, event_id: str, room: str) -> str:
    status, body = await call(
        client, "POST", "/v1/dispatches", {"event_id": event_id, "room": room}
    )
    assert status == 202, body
    return str(body["session_id"])


async def test_the_dashboard_follows_sessions_reports_and_replays(
    page: Any,
    service: Service,
    client: aiohttp.ClientSession,
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    orchestrator: Worker,
    agent_worker: AcceptingWorker,
    tmp_path: Path,
) -> None:
    # Without a token the page asks for one, and keeps it for the tab.
    await page.goto(service.url + "/")
    await page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)
    await page.fill("#token", TOKEN)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#login", state="hidden", timeout=WAIT_MS)
    await page.wait_for_selector("#worker.ok", timeout=WAIT_MS)  # the data has loaded

    sid = await dispatch(client, "evt-ui-1", "support-room-1")
    row = page.locator(f'#live tr[data-session-id="{sid}"]')
    await row.wait_for(timeout=WAIT_MS)
    assert "support-room-1" in await row.inner_text()
    await eventually(lambda: session_in(client, sid, "assigned"), what="assigned")
    await page.wait_for_selector(
        f'#live tr[data-session-id="{sid}"] .badge.assigned', timeout=WAIT_MS
    )
    for n in (2, 3):
        await dispatch(client, f"evt-ui-{n}", f"support-room-{n}")

    report = agent_report(sid, "support-room-1", event_id="evt-ui-1", duration_s=42.0)
    await enqueue_session_report(arq_redis, report)
    report_row = page.locator(f'#reports tr[data-session-id="{sid}"]')
    await report_row.wait_for(timeout=WAIT_MS)
    text = await report_row.inner_text()
    assert "completed" in text
    assert "42 s" in text
    await page.locator(f'#live tr[data-session-id="{sid}"]').wait_for(
        state="detached", timeout=WAIT_MS
    )

    # A dispatch LiveKit refuses becomes a failure with its reason and a replay button.
    sim.faults.set(CREATE, error_rate=1.0, error_code="invalid_argument", error_msg="bad agent")
    failed_sid = await dispatch(client, "evt-ui-fail", "support-room-9")
    await eventually(lambda: session_in(client, failed_sid, "failed"), what="failed")
    sim.faults.clear()
    _, letters = await call(client, "GET", "/v1/dead-letters")
    entry_id = letters["dead_letters"][0]["entry_id"]
    failure = page.locator(f'#failures tr[data-entry-id="{entry_id}"]')
    await failure.wait_for(timeout=WAIT_MS)
    assert "bad agent" in await failure.inner_text()
    await page.wait_for_selector("#ttd-summary:not(:empty)", timeout=WAIT_MS)
    await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

    await failure.locator("button.replay").click()
    await failure.locator(".replayed").wait_for(timeout=WAIT_MS)
    _, letters = await call(client, "GET", "/v1/dead-letters")
    assert letters["dead_letters"][0]["replayed_as"] == "dispatch:evt-ui-fail:g1"

    async def replayed_session() -> str | None:
        _, event = await call(client, "GET", "/v1/events/evt-ui-fail")
        new_sid = event["session_id"]
        return new_sid if new_sid != failed_sid else None

    new_sid = await eventually(replayed_session, what="replay claimed the room")
    await page.locator(f'#live tr[data-session-id="{new_sid}"]').wait_for(timeout=WAIT_MS)
    await page.screenshot(path=str(tmp_path / "dashboard-after-replay.png"), full_page=True)


async def test_the_dashboard_shows_each_agent_names_line(
    page: Any,
    service: Service,
    client: aiohttp.ClientSession,
    arq_redis: ArqRedis,
    orchestrator: Worker,
    agent_worker: AcceptingWorker,
) -> None:
    # One worker of ours offers a single slot: the second event waits.
    record = WorkerRecord(
        instance="AI_ui", agent_name=AGENT, worker_id="AW_ui", max_sessions=1, sessions={}
    )
    await beat_worker(arq_redis, record)
    await dispatch(client, "evt-line-1", "line-room-1")
    await dispatch(client, "evt-line-2", "line-room-2")

    await page.goto(service.url + "/")
    await page.fill("#token", TOKEN)
    await page.click("#login-form button[type=submit]")
    row = page.locator(f'#lines tr[data-agent-name="{AGENT}"]')
    await row.wait_for(timeout=WAIT_MS)
    cells = [text.strip() for text in await row.locator("td").all_inner_texts()]
    assert cells == [AGENT, "1", "1", "1"]  # capacity, in use, waiting


async def test_the_dashboard_shows_which_session_replaced_which(
    page: Any,
    service: Service,
    client: aiohttp.ClientSession,
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    orchestrator: Worker,
    agent_worker: AcceptingWorker,
) -> None:
    first, second = await a_dead_agent_replaced(client, arq_redis, sim, "evt-ui-died")

    await page.goto(service.url + "/")
    await page.fill("#token", TOKEN)
    await page.click("#login-form button[type=submit]")
    live = page.locator(f'#live tr[data-session-id="{second}"] .chain')
    await live.wait_for(timeout=WAIT_MS)
    assert await live.get_attribute("title") == f"replaces {first}: its agent died"
    report = page.locator(f'#reports tr[data-session-id="{first}"]')
    await report.wait_for(timeout=WAIT_MS)
    assert f"replaced by {second}" in await report.inner_text()
