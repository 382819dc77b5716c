"""`orchestrator doctor`: every check green when everything runs, and each failure named with
its fix (real Redis, the LiveKit sim, an in-process orchestrator worker, a protocol-level
agent worker)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest
from arq import ArqRedis
from livekit import api
from redis.asyncio import Redis

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis, free_port
from orchestrator.doctor import (
    Check,
    LiveKitClock,
    run_checks,
    skew_check,
    worker_checks,
)
from orchestrator.settings import Settings
from tasks import DispatchRequest, enqueue_dispatch, keys, session_id_for
from tasks.heartbeat import WorkerRecord, beat_worker
from tests.cli.conftest import REPO, Cli, cli_env
from tests.orchestrator.conftest import AGENT, API_KEY, API_SECRET, RunWorker, make_settings
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

CHECKS = [
    "settings",
    "redis",
    "redis persistence",
    "redis eviction",
    "orchestrator workers",
    "redis outages",
    "queue",
    "agent workers",
    "waiting lines",
    "livekit",
    "clock skew",
    "livekit credentials",
    "stray agents",
    "agent worker",
]


@pytest.fixture
def aof_redis() -> Iterator[LocalRedis]:
    with LocalRedis(appendonly=True) as server:
        yield server


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


async def test_all_green_with_workers_running(
    aof_redis: LocalRedis,
    sim: LiveKitSim,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
    cli: Cli,
) -> None:
    settings = make_settings(aof_redis, sim)
    await run_worker(settings)
    probe = Redis.from_url(aof_redis.url)
    await eventually(lambda: probe.exists(keys.WORKER_HEALTH_CHECK), what="worker health check")
    # The record one of our agent workers keeps (the protocol-level test worker writes none).
    permissions = {"hidden": True, "can_publish": False, "can_subscribe": True}
    record = WorkerRecord("AI_1", AGENT, "AW_1", 4, {"S_1": "running"}, permissions=permissions)
    await beat_worker(probe, record)

    ran = await cli("doctor", REDIS_URL=aof_redis.url)

    assert ran.code == 0, ran.out + ran.err
    lines = ran.out.splitlines()
    for name in CHECKS:
        assert any(line.startswith("[ ok ] " + name) for line in lines), (name, ran.out)
    assert "fix:" not in ran.out
    assert "\x1b[" not in ran.out  # no colours into a pipe
    assert f"agent_name={AGENT!r}" in ran.out
    assert f"{AGENT!r}: 1 worker, 1 of 4 sessions in use; hidden, no publish" in ran.out
    # The probe went to a real worker, then was cleaned up: no room, no report filed.
    assert len(agent_worker.jobs) == 1
    assert agent_worker.jobs[0].room.name.startswith("lkd-doctor-")
    await eventually(lambda: agent_worker.terminated, what="probe job terminated")
    assert not [r for r in sim.rooms if r.startswith("lkd-doctor-")]
    assert await probe.xlen(keys.RESULTS_STREAM) == 0
    await probe.aclose()


async def test_no_agent_worker_names_the_agent_name(
    sim: LiveKitSim, settings: Settings, orchestrator: object, cli: Cli
) -> None:
    ran = await cli("doctor", "--json", "--agent-timeout-s", "1")

    assert ran.code == 1
    report = ran.json()
    assert report["ok"] is False
    checks = {c["name"]: c for c in report["checks"]}
    assert [c["name"] for c in report["checks"]] == CHECKS
    agent = checks["agent worker"]
    assert agent["status"] == "fail"
    assert f"agent_name={AGENT!r}" in agent["detail"]
    assert f"AGENT_NAME={AGENT}" in agent["fix"]
    assert checks["orchestrator workers"]["status"] == "ok"
    assert checks["livekit credentials"]["status"] == "ok"
    assert not [r for r in sim.rooms if r.startswith("lkd-doctor-")]


async def test_wrong_secret_fails_the_credentials_check(
    sim: LiveKitSim, settings: Settings, arq_redis: ArqRedis
) -> None:
    wrong = settings.model_copy(
        update={"livekit_api_secret": settings.livekit_api_secret.__class__("x" * 40)}
    )
    checks = by_name(await run_checks(settings.redis_url, wrong))

    assert checks["livekit"].status == "ok"
    creds = checks["livekit credentials"]
    assert creds.status == "fail"
    assert "rejected the credentials" in creds.detail
    assert "LIVEKIT_API_SECRET" in creds.fix
    assert checks["agent worker"].status == "skip"
    assert not sim.calls_to("AgentDispatchService/CreateDispatch")


async def test_no_orchestrator_worker_fails_that_check(
    settings: Settings, arq_redis: ArqRedis, agent_worker: AcceptingWorker
) -> None:
    checks = by_name(await run_checks(settings.redis_url, settings))

    worker = checks["orchestrator workers"]
    assert worker.status == "fail"
    assert "arq orchestrator.WorkerSettings" in worker.fix
    assert checks["agent worker"].status == "ok"


async def test_a_redis_that_persists_nothing_is_a_warning(
    settings: Settings, arq_redis: ArqRedis
) -> None:
    checks = by_name(await run_checks(settings.redis_url, settings, probe=False))

    persistence = checks["redis persistence"]
    assert persistence.status == "warn"
    assert "nothing persists" in persistence.detail
    assert "appendonly yes" in persistence.fix
    assert checks["agent worker"].status == "skip"


async def test_a_redis_that_evicts_keys_is_a_warning(settings: Settings) -> None:
    with LocalRedis() as evicting:
        client = Redis.from_url(evicting.url)
        await client.config_set("maxmemory-policy", "allkeys-lru")
        await client.aclose()
        checks = by_name(await run_checks(evicting.url, None))

    eviction = checks["redis eviction"]
    assert eviction.status == "warn"
    assert "allkeys-lru" in eviction.detail
    assert "noeviction" in eviction.fix


async def test_unreachable_services_are_named(settings: Settings, arq_redis: ArqRedis) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    no_livekit = settings.model_copy(update={"livekit_url": f"ws://127.0.0.1:{free_port()}"})
    checks = by_name(await run_checks(nowhere, no_livekit))

    assert checks["redis"].status == "fail"
    assert "REDIS_URL" in checks["redis"].fix
    assert checks["orchestrator workers"].status == "skip"
    assert checks["livekit"].status == "fail"
    assert "LIVEKIT_URL" in checks["livekit"].fix
    assert checks["livekit credentials"].status == "skip"


async def test_missing_settings_still_check_redis(settings: Settings, cli: Cli) -> None:
    ran = await cli("doctor", LIVEKIT_URL="", LIVEKIT_API_KEY="")

    assert ran.code == 1
    assert ran.out.startswith("[FAIL] settings")
    assert "LIVEKIT_URL is not set" in ran.out
    assert "[ ok ] redis " in ran.out


@pytest.mark.parametrize(
    ("offset_s", "status"), [(0, "ok"), (-20, "warn"), (30, "warn"), (-120, "fail"), (300, "fail")]
)
def test_clock_skew_verdicts(offset_s: float, status: str) -> None:
    now = time.time()
    clock = LiveKitClock(formatdate(now + offset_s, usegmt=True), now - 0.05, now + 0.05)

    check = skew_check(clock)

    assert check.status == status
    if status == "fail":
        assert "rejects tokens" in check.detail
        assert "NTP" in check.fix


async def test_colours_only_in_a_terminal_and_never_with_no_color(
    settings: Settings, arq_redis: ArqRedis
) -> None:
    async def in_terminal(**env: str) -> str:
        leader, follower = os.openpty()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator", "doctor", "--no-probe",
            env=cli_env(settings, **env), cwd=REPO, stdout=follower, stderr=follower,
        )  # fmt: skip
        os.close(follower)
        await asyncio.wait_for(proc.wait(), 30)
        chunks = []
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(leader, 65536):
                chunks.append(chunk)
        os.close(leader)
        return b"".join(chunks).decode()

    coloured = await in_terminal()
    assert "\x1b[32m[ ok ]\x1b[0m redis" in coloured
    plain = await in_terminal(NO_COLOR="1")
    assert "[ ok ] redis" in plain
    assert "\x1b[" not in plain


async def test_the_last_redis_outage_the_workers_rode_out_is_shown(arq_redis: ArqRedis) -> None:
    ended = int(time.time() * 1000) - 120_000
    await arq_redis.hset(
        keys.REDIS_OUTAGE, mapping={"started_ms": ended - 42_000, "ended_ms": ended}
    )
    [outages] = [c for c in await worker_checks(arq_redis) if c.name == "redis outages"]
    assert outages.status == "ok"
    assert "it lasted 42 s and ended 120 s ago" in outages.detail


async def test_a_room_whose_agent_came_from_elsewhere_is_a_warning_with_the_fix(
    sim: LiveKitSim,
    settings: Settings,
    arq_redis: ArqRedis,
    orchestrator: object,
    agent_worker: AcceptingWorker,
) -> None:
    await enqueue_dispatch(arq_redis, DispatchRequest(event_id="ev-ours", room="our-room"))
    session = keys.session_key(session_id_for("ev-ours"))
    await eventually(
        lambda: _has(arq_redis.hget(session, "status"), b"assigned"), what="our session assigned"
    )
    async with api.LiveKitAPI(sim.url, API_KEY, API_SECRET) as lk:  # as a token's room config
        agents = [api.RoomAgentDispatch(agent_name=AGENT)]
        await lk.room.create_room(api.CreateRoomRequest(name="token-room", agents=agents))
    await eventually(
        lambda: [j for j in agent_worker.jobs if j.room.name == "token-room"],
        what="the token's agent in its room",
    )

    stray = by_name(await run_checks(settings.redis_url, settings, probe=False))["stray agents"]

    assert stray.status == "warn"
    assert "1 of 2 running rooms" in stray.detail
    assert f"token-room (agent_name={AGENT!r})" in stray.detail
    assert "our-room" not in stray.detail
    assert "room configuration naming agents" in stray.fix


async def _has(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]


async def test_publisher_workers_are_shown_and_not_probed(
    sim: LiveKitSim, settings: Settings, arq_redis: ArqRedis, orchestrator: object, cli: Cli
) -> None:
    record = WorkerRecord("AI_p", AGENT, "AW_p", 4, {}, job_type="publisher")
    await beat_worker(arq_redis, record)

    ran = await cli("doctor", "--json", "--agent-timeout-s", "1")

    checks = {c["name"]: c for c in ran.json()["checks"]}
    assert "a job per publisher" in checks["agent workers"]["detail"]
    probe = checks["agent worker"]
    assert probe["status"] == "skip"
    assert "AGENT_JOB_TYPE=publisher" in probe["detail"]
    assert not [r for r in sim.rooms if r.startswith("lkd-doctor-")]  # no test dispatch made
