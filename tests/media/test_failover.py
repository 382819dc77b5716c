"""Failover with real media: a caller in the room, two real agent workers running the default
handler over WebRTC. When the agent's job process or its whole worker is SIGKILLed, a new
agent joins and greets the caller again, with the resume greeting; the room never goes
without its claim holder; and the dead agent, as on a real server, lingers in the room's
list (a ghost, until its peer connection times out) without holding the failover up.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from arq import ArqRedis
from arq.worker import Worker
from livekit.protocol import models

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from tasks import create_redis
from tasks.heartbeat import worker_records
from tests.agent.worker_process import AgentWorker
from tests.media.conftest import media_agent_env
from tests.media.test_agent_session import GREETING_TOPIC, report_of
from tests.support.claims import ClaimWatch
from tests.support.events import send_event
from tests.support.orchestrator_worker import running_orchestrator, settings_for
from tests.support.sim import running_sim
from tests.support.waiting import eventually

pytestmark = [pytest.mark.media, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

HELLO = "Hello! You are connected to the agent."  # AGENT_GREETING_TEXT's default
RESUMED = "Sorry, we were cut off. I'm back now."  # AGENT_RESUME_GREETING_TEXT's default
GHOST_S = 15.0  # the sim's peer connection timeout (its default)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def queue(redis_server: LocalRedis) -> AsyncIterator[ArqRedis]:
    pool = await create_redis(redis_server.url)
    yield pool
    await pool.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[LiveKitSim]:
    async with running_sim(
        departure_timeout_s=1.0,
        room_check_interval_s=0.2,
        missing_room_delay_s=0.2,
        peer_connection_timeout_s=GHOST_S,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def agent_name() -> str:
    return f"failover-agent-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agents(
    sim: LiveKitSim,
    redis_server: LocalRedis,
    agent_name: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[list[AgentWorker]]:
    env = media_agent_env(sim, redis_server.url, agent_name)
    logs = tmp_path_factory.mktemp("failover-agents")
    pair = [AgentWorker(env, logs / f"worker-{i}.log").start() for i in range(2)]
    try:
        for worker in pair:
            await worker.wait_registered(agent_name)
        yield pair
    finally:
        for worker in pair:
            await worker.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def orchestrator(
    redis_server: LocalRedis, sim: LiveKitSim, agent_name: str, agents: list[AgentWorker]
) -> AsyncIterator[Worker]:
    settings = settings_for(
        redis_server.url,
        sim,
        agent_name,
        assignment_check_delay_s=2.0,
        report_grace_s=120,  # only the fast signals act: the crash note, the worker's beat
        agent_worker_timeout_s=2.0,
        worker_watch_interval_s=0.2,
    )
    async with running_orchestrator(settings) as arq_worker:
        yield arq_worker


def agents_in(sim: LiveKitSim, room: str) -> dict[str, models.ParticipantInfo]:
    return {
        p.identity: p for p in sim.participants(room) if p.kind == models.ParticipantInfo.Kind.AGENT
    }


def greetings(sim: LiveKitSim, room: str) -> list[tuple[str, str]]:
    return [(m.sender, m.text) for m in sim.texts(room, topic=GREETING_TOPIC)]


async def a_call(
    sim: LiveKitSim, queue: ArqRedis, agents: list[AgentWorker]
) -> tuple[str, str, AgentWorker, str]:
    """A caller talking with a greeting agent: (room, session id, the worker that runs it,
    the agent's identity)."""
    room = f"call-{uuid.uuid4().hex[:8]}"
    session_id = await send_event(queue, room, {"order": "A-17"})
    await sim.join_participant(room, "caller", audio=True)
    [(agent, text)] = await eventually(
        lambda: greetings(sim, room), timeout_s=30, what="the agent's greeting"
    )
    assert text == HELLO
    runs = next(w for w in agents if w.find("session started", session_id=session_id))

    async def in_its_record() -> bool:
        return any(session_id in r.sessions for r in await worker_records(queue, 0))

    await eventually(in_its_record, what="the worker's beat to name the session")
    return room, session_id, runs, agent


async def a_new_agent_greets_again(
    sim: LiveKitSim, room: str, dead_agent: str, watch: ClaimWatch, dead_session: str
) -> str:
    """The replacement greets with the resume text while the dead agent is still listed;
    returns its session id."""
    [(agent, text)] = await eventually(
        lambda: greetings(sim, room)[1:], timeout_s=GHOST_S - 3, what="a new agent's greeting"
    )
    assert text == RESUMED
    assert agent != dead_agent
    listed = agents_in(sim, room)
    assert listed[agent].state == models.ParticipantInfo.State.ACTIVE
    assert dead_agent in listed  # the ghost: failover did not wait for it to go
    holders = await watch.stop()
    assert holders[0] == dead_session
    assert len(holders) == 2  # one hand-over, never a moment without a holder
    assert holders[1] is not None
    return holders[1]


async def test_a_killed_job_process_is_replaced_by_an_agent_that_greets_again(
    orchestrator: Worker, sim: LiveKitSim, queue: ArqRedis, agents: list[AgentWorker]
) -> None:
    room, session_id, runs, agent = await a_call(sim, queue, agents)
    started = runs.find("session started", session_id=session_id)[-1]
    watch = ClaimWatch(queue, room)

    os.kill(started["pid"], signal.SIGKILL)

    replacement = await a_new_agent_greets_again(sim, room, agent, watch, session_id)
    lost = await report_of(queue, session_id)
    assert (lost.status, lost.replaced_by) == ("lost", replacement)
    await eventually(
        lambda: agent not in agents_in(sim, room), timeout_s=GHOST_S + 5, what="the ghost gone"
    )
    await sim.leave_participant(room, "caller")
    report = await report_of(queue, replacement)
    assert (report.status, report.replaces) == ("completed", session_id)
    assert report.end_reason == "every participant left"
    assert report.outputs["resumed_from"] == session_id


async def test_a_killed_worker_is_replaced_on_the_other_one(
    orchestrator: Worker,
    sim: LiveKitSim,
    queue: ArqRedis,
    agents: list[AgentWorker],
    tmp_path: Path,
) -> None:
    room, session_id, runs, agent = await a_call(sim, queue, agents)
    other = agents[1 - agents.index(runs)]
    watch = ClaimWatch(queue, room)

    runs.kill()  # the worker and its job processes, as a machine that dies

    replacement = await a_new_agent_greets_again(sim, room, agent, watch, session_id)
    assert other.find("session started", session_id=replacement)
    lost = await report_of(queue, session_id)
    assert lost.error is not None
    assert "agent worker stopped beating" in lost.error
    await sim.leave_participant(room, "caller")
    assert (await report_of(queue, replacement)).status == "completed"
