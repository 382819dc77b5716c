"""The command line as an operator uses it: `python -m orchestrator ...` against real Redis,
the LiveKit sim, an in-process orchestrator worker and a protocol-level agent worker."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import UTC, datetime

import aiohttp
import pytest
from arq import ArqRedis
from arq.worker import Worker
from livekit import api

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import free_port
from orchestrator.settings import Settings
from tasks import SessionReport, enqueue_session_report, session_id_for
from tasks.results import ResultsConsumer
from tests.cli.conftest import REPO, Cli, cli_env
from tests.orchestrator.conftest import AGENT
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

pytestmark = pytest.mark.system


async def test_dispatch_then_look_the_session_up(
    sim: LiveKitSim, orchestrator: Worker, agent_worker: AcceptingWorker, cli: Cli
) -> None:
    ran = await cli(
        "dispatch", "--room", "cli-room", "--event-id", "cli-1",
        "--meta", "user_id=u1", "--metadata", '{"ticket": 7}', "--wait-s", "10",
    )  # fmt: skip

    assert ran.code == 0, ran.err
    session_id = session_id_for("cli-1")
    assert "enqueued dispatch:cli-1" in ran.out
    assert session_id in ran.out
    assert "dispatched" in ran.out
    [dispatch] = sim.dispatches("cli-room")[-1:]
    assert json.loads(dispatch.metadata)["metadata"] == {"ticket": 7, "user_id": "u1"}

    await eventually(
        lambda: _status(cli, session_id, "assigned"), timeout_s=20, what="assigned session"
    )
    by_room = await cli("session", "--room", "cli-room")
    assert by_room.code == 0
    assert "assigned" in by_room.out
    assert AGENT in by_room.out

    listed = await cli("sessions", "--status", "assigned", "--json")
    assert [s["session_id"] for s in listed.json()] == [session_id]
    table = await cli("sessions")
    assert table.out.splitlines()[0].split()[:3] == ["SESSION", "STATUS", "ROOM"]
    assert session_id in table.out

    again = await cli("dispatch", "--room", "cli-room", "--event-id", "cli-1", "--json")
    assert again.json()["enqueued"] is False

    ended = await cli("end", session_id, "--reason", "operator test")
    assert ended.code == 0
    assert "end session" in ended.out
    await eventually(lambda: agent_worker.terminated, what="the agent's job terminated")


async def _status(cli: Cli, session_id: str, status: str) -> bool:
    ran = await cli("session", session_id, "--json")
    return ran.code == 0 and ran.json()["status"] == status


async def test_unknown_session_and_bad_input_exit_with_reasons(
    cli: Cli, arq_redis: ArqRedis
) -> None:
    missing = await cli("session", "S_nope")
    assert missing.code == 1
    assert "no session S_nope" in missing.err

    bad = await cli("dispatch", "--room", "r", "--agent-name", "not valid!")
    assert bad.code == 2
    assert "--agent-name: Value error, 'not valid!' is not a valid agent name" in bad.err
    not_object = await cli("dispatch", "--room", "r", "--metadata", "[1]")
    assert not_object.code == 2
    assert "--metadata: must be a JSON object" in not_object.err

    invalid = await cli("dispatch", "--event", "-", stdin=b'{"event_id": "e 1", "room": ""}')
    assert invalid.code == 2
    assert "event_id" in invalid.err
    assert "room" in invalid.err
    assert await arq_redis.zcard("arq:queue") == 0

    since = await cli("sessions", "--since", "yesterday-ish")
    assert since.code == 2
    assert "--since" in since.err

    no_redis = await cli("sessions", REDIS_URL="redis://:hunter2@127.0.0.1:1/0")
    assert no_redis.code == 2
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in no_redis.err
    assert "hunter2" not in no_redis.err


async def test_dead_letters_list_and_replay(
    sim: LiveKitSim, orchestrator: Worker, arq_redis: ArqRedis, cli: Cli
) -> None:
    await arq_redis.enqueue_job("dispatch_agent", {"event_id": "bad-1"}, _job_id="bad:1")
    sim.faults.set(
        "AgentDispatchService/CreateDispatch", error_rate=1.0, error_code="permission_denied"
    )
    failed = await cli("dispatch", "--room", "r-denied", "--event-id", "denied-1", "--wait-s", "10")
    assert "failed" in failed.out
    sim.faults.clear()

    letters = await cli("dead-letters", "--json")
    by_event = {d["event_id"]: d for d in letters.json()}
    assert by_event["bad-1"]["kind"] == "invalid_event"
    assert "room: Field required" in by_event["bad-1"]["reason"]
    assert "payload" not in by_event["bad-1"]  # kept in Redis, shown only with --payload
    assert by_event["denied-1"]["replayable"] is True
    text = await cli("dead-letters")
    assert "room: Field required" in text.out
    assert "replayable" in text.out

    refused = await cli("dead-letters", "replay", by_event["bad-1"]["entry_id"])
    assert refused.code == 1
    assert "cannot be replayed" in refused.err

    replayed = await cli("dead-letters", "replay", by_event["denied-1"]["entry_id"], "--json")
    assert replayed.code == 0
    job_id = replayed.json()["job_id"]
    assert job_id == "dispatch:denied-1:g1"
    await eventually(lambda: sim.dispatches("r-denied"), what="the replayed dispatch")
    twice = await cli("dead-letters", "replay", by_event["denied-1"]["entry_id"])
    assert twice.code == 1
    assert "already replayed" in twice.err


def _report(n: int) -> SessionReport:
    return SessionReport(
        session_id=f"S_cli{n}", event_id=f"e{n}", room=f"room-{n}", status="completed",
        end_reason="caller hung up", ended_at=datetime.now(UTC), duration_s=3.5,
    )  # fmt: skip


async def test_results_recent_and_consumer_group(
    orchestrator: Worker, arq_redis: ArqRedis, cli: Cli
) -> None:
    for n in (1, 2):
        await enqueue_session_report(arq_redis, _report(n))
    await eventually(lambda: arq_redis.xlen("lkd:results"), what="reports filed")
    await eventually(lambda: _xlen_is(arq_redis, 2), what="both reports filed")

    recent = await cli("results", "--json")
    assert [json.loads(line)["session_id"] for line in recent.out.splitlines()] == [
        "S_cli1",
        "S_cli2",
    ]
    text = await cli("results")
    assert "completed" in text.out
    assert "caller hung up" in text.out
    assert "3.5s" in text.out

    first = await cli("results", "--group", "billing", "--json")
    assert len(first.out.splitlines()) == 2
    again = await cli("results", "--group", "billing", "--json")
    assert again.out == ""  # acknowledged: a group sees each report once
    pending = await arq_redis.xpending("lkd:results", "billing")
    assert pending["pending"] == 0
    assert await ResultsConsumer(arq_redis, "billing", "x").read() == []


async def _xlen_is(redis: ArqRedis, n: int) -> bool:
    return await redis.xlen("lkd:results") == n


async def test_results_follow_prints_new_reports_until_interrupted(
    settings: Settings, orchestrator: Worker, arq_redis: ArqRedis
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", "results", "--follow", "--json",
        env=cli_env(settings), cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        await asyncio.sleep(0)  # the follower may start before or after the report: both work
        await enqueue_session_report(arq_redis, _report(3))
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert json.loads(line)["session_id"] == "S_cli3"
        await enqueue_session_report(arq_redis, _report(4))
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert json.loads(line)["session_id"] == "S_cli4"
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0


async def test_serve_answers_then_stops_cleanly_on_sigterm(
    settings: Settings, arq_redis: ArqRedis, cli: Cli
) -> None:
    missing = await cli("serve", LIVEKIT_API_SECRET="")
    assert missing.code == 2
    assert "LIVEKIT_API_SECRET is not set" in missing.err

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", "serve", "--port", str(port),
        env=cli_env(settings), cwd=REPO, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:

        async def ready() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{port}/readyz") as answer,
                ):
                    return answer.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout_s=30, what="the HTTP service")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0


async def test_token_gives_a_person_a_join_token_for_the_room(cli: Cli, sim: LiveKitSim) -> None:
    ran = await cli(
        "token", "--room", "room 7", "--identity", "caller-7", "--name", "Ada",
        "--attribute", "tier=gold", "--ttl-s", "120", "--no-publish", "--json",
    )  # fmt: skip
    assert ran.code == 0, ran.err
    join = ran.json()
    assert (join["url"], join["room"]) == ("ws://" + sim.url.removeprefix("http://"), "room 7")
    claims = api.TokenVerifier(sim.api_key, sim.api_secret).verify(join["token"])
    assert (claims.identity, claims.name, claims.attributes) == (
        "caller-7",
        "Ada",
        {"tier": "gold"},
    )
    assert claims.video is not None
    assert (claims.video.room_join, claims.video.room) == (True, "room 7")
    assert (claims.video.can_publish, claims.video.can_subscribe) == (False, True)
    assert claims.room_config is None

    ran = await cli("token", "--room", "room 7", "--identity", "caller-8", NO_COLOR="1")
    assert ran.code == 0, ran.err
    lines = dict(line.split(":", 1) for line in ran.out.splitlines())
    assert set(lines) == {"url", "room", "expires", "token"}
    assert api.TokenVerifier(sim.api_key, sim.api_secret).verify(lines["token"].strip())
