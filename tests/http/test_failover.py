"""Failover as people see it: a session whose agent died and the one that replaced it, linked
both ways in the session API and the CLI, each with its chain; the restarts in the metrics;
the reports that say which replaced which."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from arq import ArqRedis
from arq.worker import Worker

from livekit_sim import LiveKitSim
from orchestrator.jobs.reconcile import reconcile_sessions
from orchestrator.settings import Settings
from tasks import recent_results
from tasks.heartbeat import note_exit
from tasks.keys import DUPLICATE_REPORTS_STREAM, agent_heartbeat_key, room_claim_key
from tasks.models import JobMetadata, session_id_for
from tests.cli.conftest import cli_env, run_cli
from tests.http.test_api import call, session_in
from tests.http.test_observe import scrape
from tests.http.test_webhooks import counted_once_more
from tests.orchestrator.test_failover import redis_up_for_s
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def a_dead_agent_replaced(
    client: aiohttp.ClientSession, redis: ArqRedis, sim: LiveKitSim, event_id: str
) -> tuple[str, str]:
    """A call whose agent's job process died with the caller in the room: (the dead session,
    its replacement), once the replacement is dispatched."""
    room = f"room-{event_id}"
    await sim.join_participant(room, "caller")
    status, body = await call(
        client, "POST", "/v1/dispatches", {"event_id": event_id, "room": room}
    )
    assert status == 202, body
    first = str(body["session_id"])

    async def assigned() -> dict[str, Any] | None:
        _, view = await call(client, "GET", f"/v1/sessions/{first}")
        return view if view["status"] == "assigned" else None

    view = await eventually(assigned, what="the agent took the job")
    await note_exit(redis, first, view["job_id"])
    second = session_id_for(event_id, restart=1)

    async def dispatched() -> bool:
        status, view = await call(client, "GET", f"/v1/sessions/{second}")
        return status == 200 and view["status"] in ("dispatched", "assigned")

    await eventually(dispatched, what="the replacement dispatched")
    return first, second


async def test_the_api_the_cli_and_the_metrics_show_the_chain(
    client: aiohttp.ClientSession,
    arq_redis: ArqRedis,
    settings: Settings,
    sim: LiveKitSim,
    orchestrator: Worker,
    agent_worker: AcceptingWorker,
) -> None:
    first, second = await a_dead_agent_replaced(client, arq_redis, sim, "ev-chain")

    _, dead = await call(client, "GET", f"/v1/sessions/{first}")
    assert (dead["status"], dead["replaced_by"], dead["chain"]) == ("lost", second, [first, second])
    _, alive = await call(client, "GET", f"/v1/sessions/{second}")
    assert (alive["replaces"], alive["restart"], alive["chain"]) == (first, 1, [first, second])
    _, event = await call(client, "GET", "/v1/events/ev-chain")
    assert event["session_id"] == second  # the event now points at its live session
    [report] = [
        e.report for e in await recent_results(arq_redis, 100) if e.report.session_id == first
    ]
    assert (report.status, report.replaced_by) == ("lost", second)

    ran = await run_cli(cli_env(settings), "session", second, "--json")
    assert json.loads(ran.out)["chain"] == [first, second]
    ran = await run_cli(cli_env(settings, NO_COLOR="1"), "session", second)
    text = " ".join(ran.out.split())
    assert f"replaces {first}" in text
    assert f"chain {first} -> {second}" in text

    async def counted() -> dict[Any, float] | None:
        found = await scrape(client)
        wanted = {
            ("lkd_agent_deaths_total", (("outcome", "replaced"),)): 1.0,
            ("lkd_restart_seconds_count", ()): 1.0,
        }
        return found if all(found.get(k) == v for k, v in wanted.items()) else None

    await eventually(counted, what="the restart in the metrics")


async def test_the_webhook_the_crash_note_and_reconciliation_at_once_make_one_replacement(
    client: aiohttp.ClientSession,
    arq_redis: ArqRedis,
    sim: LiveKitSim,
    orchestrator: Worker,
    agent_worker: AcceptingWorker,
) -> None:
    room = "room-three-signals"
    await sim.join_participant(room, "caller")
    event = {"event_id": "ev-three", "room": room}
    _, accepted = await call(client, "POST", "/v1/dispatches", event)
    first = accepted["session_id"]
    view = await eventually(lambda: session_in(client, first, "assigned"), what="assigned")
    agent = f"agent-{view['job_id']}"
    await sim.join_participant(room, agent, kind="agent")
    # Its heartbeat went silent long ago, so reconciliation too takes the agent for dead.
    await arq_redis.set(agent_heartbeat_key(first), int(time.time() * 1000) - 60_000)
    await eventually(lambda: redis_up_for_s(arq_redis, 1), what="Redis up for a second")
    webhook_seen = await counted_once_more(client, "participant_left", "agent_gone")
    ctx = {**orchestrator.ctx, "job_id": "reconcile-now", "job_try": 1}

    await asyncio.gather(
        sim.leave_participant(room, agent),  # LiveKit's webhook: the agent left
        note_exit(arq_redis, first, view["job_id"]),  # its worker: the job process exited
        reconcile_sessions(ctx),  # the heartbeat's silence
    )

    await eventually(webhook_seen, what="the webhook handled")
    second = session_id_for("ev-three", restart=1)
    await eventually(lambda: session_in(client, second, "dispatched", "assigned"), what="new")
    await eventually(lambda: session_in(client, first, "lost"), what="the dead one lost")
    reports = [e.report for e in await recent_results(arq_redis, 100)]
    assert [r.replaced_by for r in reports if r.session_id == first] == [second]
    ours = [d for d in sim.dispatches(room) if d.agent_name]
    assert [JobMetadata.model_validate_json(d.metadata).session_id for d in ours] == [second]
    assert (await arq_redis.get(room_claim_key(room))) == second.encode()
    assert await arq_redis.xlen(DUPLICATE_REPORTS_STREAM) == 0
