"""The waiting line as people see it: a caller's place and expected wait in the dispatch
answer, the session API and the CLI; each agent name's line on the dashboard and in the
metrics; and doctor's warning when a line waits for agents that are gone."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from arq import ArqRedis

from orchestrator.doctor import lines_check
from orchestrator.settings import Settings
from orchestrator.store.line import LineConfig
from tasks import SessionReport, enqueue_dispatch, enqueue_session_report
from tasks.heartbeat import WorkerRecord, beat_worker
from tasks.models import DispatchRequest
from tests.cli.conftest import cli_env, run_cli
from tests.http.test_observe import scrape
from tests.orchestrator.conftest import AGENT, RunWorker, make_settings
from tests.orchestrator.test_dispatch import job_result
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

CAPACITY = '{"support-agent": 1}'


@pytest.fixture
def settings(redis_server: Any, sim: Any) -> Settings:
    return make_settings(
        redis_server,
        sim,
        api_token="http-test-token-0123456789",
        metrics_flush_interval_s=0.1,
        agent_capacity={AGENT: 1},
    )


async def post(client: aiohttp.ClientSession, event_id: str) -> dict[str, Any]:
    body = {"event_id": event_id, "room": f"room-{event_id}", "metadata": {"n": 1}}
    async with client.post("/v1/dispatches", json=body) as resp:
        assert resp.status == 202
        answer: dict[str, Any] = await resp.json()
        return answer


async def get(client: aiohttp.ClientSession, path: str) -> dict[str, Any]:
    async with client.get(path) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_a_caller_learns_its_place_and_the_dashboard_and_metrics_show_the_line(
    client: aiohttp.ClientSession,
    arq_redis: ArqRedis,
    settings: Settings,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
) -> None:
    await run_worker(settings)
    first = await post(client, "ev-line-1")
    second = await post(client, "ev-line-2")
    third = await post(client, "ev-line-3")
    assert first["outcome"] == "dispatched"
    assert (second["outcome"], second["queue_position"]) == ("waiting", 1)
    assert (third["outcome"], third["queue_position"]) == ("waiting", 2)
    assert third["estimated_wait_s"] is None  # no session has completed yet: nothing tells

    overview = await get(client, "/v1/overview")
    assert overview["lines"] == [{"agent_name": AGENT, "capacity": 1, "in_use": 1, "waiting": 2}]

    # The first session ends after 40 s of talk: the second goes, the third is next, and
    # one slot freeing every 40 s puts it 40 s away.
    session = await get(client, first["status_url"])
    await enqueue_session_report(
        arq_redis,
        SessionReport(
            session_id=session["session_id"],
            event_id=session["event_id"],
            room=session["room"],
            status="completed",
            duration_s=40.0,
        ),
    )

    async def let_out() -> bool:
        view = await get(client, second["status_url"])
        return view["status"] == "dispatched"

    await eventually(let_out, what="the second let out")
    view = await get(client, third["status_url"])
    assert (view["status"], view["queue_position"], view["estimated_wait_s"]) == (
        "waiting",
        1,
        40.0,
    )

    async def gauges() -> dict[Any, float] | None:
        found = await scrape(client)
        labels = (("agent_name", AGENT),)
        wanted = {
            ("lkd_agent_capacity", labels): 1.0,
            ("lkd_agent_sessions", labels): 1.0,
            ("lkd_waiting_sessions", labels): 1.0,
            ("lkd_wait_seconds_count", ()): 1.0,
        }
        return found if all(found.get(k) == v for k, v in wanted.items()) else None

    await eventually(gauges, what="the line's metrics")

    ran = await run_cli(
        cli_env(settings, LKD_AGENT_CAPACITY=CAPACITY), "session", third["session_id"], "--json"
    )
    shown = json.loads(ran.out)
    assert (shown["status"], shown["queue_position"], shown["estimated_wait_s"]) == (
        "waiting",
        1,
        40.0,
    )
    ran = await run_cli(cli_env(settings, NO_COLOR="1"), "session", third["session_id"])
    assert "place in line 1" in " ".join(ran.out.split())


async def test_doctor_warns_of_a_line_waiting_for_agent_workers_that_are_gone(
    arq_redis: ArqRedis,
    settings: Settings,
    run_worker: RunWorker,
) -> None:
    await run_worker(make_settings_without_static(settings))
    record = WorkerRecord(
        instance="gone", agent_name=AGENT, worker_id="AW_gone", max_sessions=0, sessions={}
    )
    await beat_worker(arq_redis, record)  # a worker of ours that offers nothing
    job = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="ev-stuck", room="r-stuck"))
    assert (await job_result(arq_redis, job.job_id))["outcome"] == "waiting"

    check = await lines_check(arq_redis, LineConfig({}, 10.0))
    assert check.status == "warn"
    assert AGENT in check.detail
    assert "1 waiting" in check.detail
    assert "AGENT_NAME" in check.fix


def make_settings_without_static(settings: Settings) -> Settings:
    return settings.model_copy(update={"agent_capacity": {}})
