"""End to end with real media: event -> orchestrator -> dispatch -> the agent (a real worker
process running the default handler) joins the room over WebRTC -> a simulated caller joins,
speaks, leaves -> the session report on the results stream.

The orchestrator is an arq worker in this process; the agent is `python -m agent start`; the
sim and Redis are this test's own. Everything runs inside the private network namespace.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from arq import ArqRedis
from arq.worker import Worker
from livekit import api, rtc
from livekit.protocol import models

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from tasks import (
    SessionReport,
    create_redis,
    recent_results,
)
from tests.agent.worker_process import AgentWorker
from tests.media.conftest import API_KEY, API_SECRET, CALLER_WAV, media_agent_env
from tests.support.events import send_event
from tests.support.http_service import running_service
from tests.support.orchestrator_worker import running_orchestrator, settings_for
from tests.support.sim import running_sim
from tests.support.waiting import eventually

pytestmark = [pytest.mark.media, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

GREETING_TOPIC = "lkd.greeting"  # the default handler's greeting topic (agent settings)
CALLER_SPEECH_S = 2.0  # tests/media/fixtures/caller.wav
ROOM_CLOSED = {
    # The agent hears of the closed room twice: its connection gets a leave (ROOM_CLOSED), and
    # LiveKit terminates its job; whichever reaches the session first names the end.
    "the room connection ended (ROOM_CLOSED)",
    "the room is no longer running (closed or deleted)",
    "the room was closed",
}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[LiveKitSim]:
    async with running_sim(
        departure_timeout_s=1.0, room_check_interval_s=0.2, missing_room_delay_s=0.2
    ) as server:
        yield server


@pytest.fixture(scope="module")
def agent_name() -> str:
    return f"media-agent-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent(
    sim: LiveKitSim,
    redis_server: LocalRedis,
    agent_name: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[AgentWorker]:
    env = media_agent_env(sim, redis_server.url, agent_name)
    log_path: Path = tmp_path_factory.mktemp("media-agent") / "worker.log"
    worker = AgentWorker(env, log_path).start()
    try:
        await worker.wait_registered(agent_name)
        yield worker
    finally:
        await worker.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def queue(redis_server: LocalRedis) -> AsyncIterator[ArqRedis]:
    pool = await create_redis(redis_server.url)
    yield pool
    await pool.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def orchestrator(
    redis_server: LocalRedis, sim: LiveKitSim, agent_name: str, agent: AgentWorker
) -> AsyncIterator[Worker]:
    settings = settings_for(
        redis_server.url,
        sim,
        agent_name,
        assignment_check_delay_s=2.0,
        report_grace_s=3.0,
    )
    async with running_orchestrator(settings) as arq_worker:
        yield arq_worker


async def report_of(queue: ArqRedis, session_id: str, timeout_s: float = 30) -> SessionReport:
    async def filed() -> SessionReport | None:
        found = [
            e.report for e in await recent_results(queue, 1000) if e.report.session_id == session_id
        ]
        return found[0] if found else None

    report: SessionReport = await eventually(
        filed, timeout_s=timeout_s, what=f"the report of {session_id}"
    )
    return report


def agent_in_room(sim: LiveKitSim, room: str) -> models.ParticipantInfo | None:
    """The agent participant once its media is connected (ACTIVE)."""
    return next(
        (
            p
            for p in sim.participants(room)
            if p.kind == models.ParticipantInfo.Kind.AGENT
            and p.state == models.ParticipantInfo.State.ACTIVE
        ),
        None,
    )


async def test_the_agent_hears_the_caller_and_reports_its_speaking_time(
    orchestrator: Worker, sim: LiveKitSim, queue: ArqRedis
) -> None:
    room = f"call-{uuid.uuid4().hex[:8]}"
    session_id = await send_event(queue, room, {"order": "A-17"})
    me = await eventually(lambda: agent_in_room(sim, room), timeout_s=30, what="the agent")

    await sim.join_participant(room, "caller", audio=True)
    [mic] = sim.media.publications(room, "caller")
    await eventually(lambda: me.identity in mic.receiving, what="the agent to receive the mic")
    greetings = await eventually(
        lambda: sim.texts(room, topic=GREETING_TOPIC), what="the agent's greeting"
    )
    assert greetings[0].sender == me.identity

    speech_s = await sim.say(room, "caller", CALLER_WAV)
    done_at = time.monotonic() + speech_s + 0.5  # the speech, and the way to the agent
    await eventually(lambda: time.monotonic() > done_at, timeout_s=speech_s + 2, what="speech")
    await sim.leave_participant(room, "caller")

    report = await report_of(queue, session_id)
    assert (report.status, report.source, report.room) == ("completed", "agent", room)
    assert report.end_reason == "every participant left"
    [caller] = report.participants
    assert (caller.identity, caller.kind) == ("caller", "standard")
    assert caller.joined_at is not None
    assert caller.left_at is not None
    assert caller.speaking_time_s == pytest.approx(CALLER_SPEECH_S, rel=0.2)


async def test_a_caller_who_never_joins_ends_the_session_on_the_empty_timeout(
    orchestrator: Worker, sim: LiveKitSim, queue: ArqRedis
) -> None:
    room = f"lonely-{uuid.uuid4().hex[:8]}"
    lkapi = api.LiveKitAPI(sim.url, API_KEY, API_SECRET)
    try:  # the room exists before the event, with a short empty timeout (as an app may do)
        await lkapi.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=6))
    finally:
        await lkapi.aclose()
    session_id = await send_event(queue, room, {"order": "A-17"})
    await eventually(lambda: agent_in_room(sim, room), timeout_s=30, what="the agent")

    await eventually(lambda: room not in sim.rooms, timeout_s=10, what="the empty timeout")
    report = await report_of(queue, session_id)
    assert (report.status, report.source) == ("completed", "agent")
    assert report.end_reason in ROOM_CLOSED
    assert report.participants == []


async def test_a_caller_joins_with_the_token_its_dispatch_answered(
    orchestrator: Worker,
    sim: LiveKitSim,
    queue: ArqRedis,
    redis_server: LocalRedis,
    agent_name: str,
) -> None:
    room = f"joined-{uuid.uuid4().hex[:8]}"
    settings = settings_for(redis_server.url, sim, agent_name, api_token="media-api-token")
    person = {"identity": "caller-7", "name": "Ada", "attributes": {"ticket": "T-1"}}
    event = {"event_id": f"ev-{uuid.uuid4().hex[:12]}", "room": room, "participant": person}
    headers = {"Authorization": "Bearer media-api-token"}
    async with (
        running_service(settings) as (url, _),
        aiohttp.ClientSession(base_url=url, headers=headers) as http,
        http.post("/v1/dispatches", json=event) as resp,
    ):
        assert resp.status == 202, await resp.text()
        answer = await resp.json()
    join = answer["join"]
    me = await eventually(lambda: agent_in_room(sim, room), timeout_s=30, what="the agent")

    caller = rtc.Room()
    await asyncio.wait_for(caller.connect(join["url"], join["token"]), 30)
    try:
        agent_seen = await eventually(
            lambda: caller.remote_participants.get(me.identity), what="the agent, from the caller"
        )
        assert agent_seen.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        [info] = [p for p in sim.participants(room) if p.identity == "caller-7"]
        assert (info.name, dict(info.attributes)) == ("Ada", {"ticket": "T-1"})
    finally:
        await caller.disconnect()

    report = await report_of(queue, answer["session_id"])
    assert (report.status, report.end_reason) == ("completed", "every participant left")
    assert [(p.identity, p.kind) for p in report.participants] == [("caller-7", "standard")]
