"""Orchestrator + agent + sim: events go in through `tasks`' producer helpers, reports come out
on the results stream. The orchestrator is an arq worker in this process; the agent is a real
worker process (`python -m agent start`).

Sessions use the test handler (tests/agent/handlers.py): modes that do not join the room, or
the default handler, which joins over the sim's `/rtc`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from arq import ArqRedis
from arq.worker import Worker

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from tasks import (
    EndSessionRequest,
    SessionReport,
    enqueue_end_session,
    recent_results,
)
from tasks.heartbeat import AgentJob, agent_job
from tasks.keys import DUPLICATE_REPORTS_STREAM, agent_heartbeat_key, session_key
from tests.agent.conftest import new_room
from tests.agent.worker_process import AgentWorker
from tests.support.events import send_event
from tests.support.orchestrator_worker import running_orchestrator, settings_for
from tests.support.waiting import eventually

pytestmark = [pytest.mark.system, pytest.mark.asyncio(loop_scope="module")]

REPORT_GRACE_S = 3.0
ROOM_GONE = {
    # The agent hears of a deleted room twice: its connection is closed (ROOM_DELETED), and
    # LiveKit terminates its job; whichever comes first names the end.
    "the room connection ended (ROOM_DELETED)",
    "the room is no longer running (closed or deleted)",
    "the room was closed",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def orchestrator(
    agent_redis_server: LocalRedis, sim: LiveKitSim, agent_name: str, worker: AgentWorker
) -> AsyncIterator[Worker]:
    settings = settings_for(
        agent_redis_server.url,
        sim,
        agent_name,
        assignment_check_delay_s=1.0,
        report_grace_s=REPORT_GRACE_S,  # the agent test worker beats every 0.5 s
    )
    async with running_orchestrator(settings) as arq_worker:
        yield arq_worker


async def results_for(queue: ArqRedis, session_id: str) -> list[SessionReport]:
    return [
        e.report for e in await recent_results(queue, 1000) if e.report.session_id == session_id
    ]


async def result(queue: ArqRedis, session_id: str, timeout_s: float = 30.0) -> SessionReport:
    async def filed() -> SessionReport | None:
        found = await results_for(queue, session_id)
        return found[0] if found else None

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        report = await filed()
        if report is not None:
            return report
        await asyncio.sleep(0.05)
    session = await queue.hgetall(session_key(session_id))  # type: ignore[misc]
    beat = await queue.get(agent_heartbeat_key(session_id))
    pytest.fail(
        f"no result for {session_id} within {timeout_s} s; session record {session}, "
        f"last heartbeat {beat!r}, now {int(time.time() * 1000)}"
    )


async def assert_only_result(queue: ArqRedis, session_id: str, worker: AgentWorker) -> None:
    """Once the agent's job processes have exited no other report can come: exactly one
    entry on the results stream, none aside as a duplicate."""
    await worker.wait_idle()
    assert len(await results_for(queue, session_id)) == 1
    duplicates = await queue.xrange(DUPLICATE_REPORTS_STREAM)
    assert all(fields[b"session_id"].decode() != session_id for _, fields in duplicates)


async def test_an_event_ends_as_one_report_on_the_results_stream(
    orchestrator: Worker, worker: AgentWorker, queue: ArqRedis, agent_name: str
) -> None:
    room = new_room()
    session_id = await send_event(queue, room, {"mode": "finish", "order": 1234})

    report = await result(queue, session_id)
    await assert_only_result(queue, session_id, worker)
    assert (report.status, report.source, report.room) == ("completed", "agent", room)
    assert report.agent_name == agent_name
    assert report.end_reason == "test handler finished"
    # The agent's entrypoint saw the orchestrator's metadata: the session id and the payload.
    assert report.outputs == {"payload_keys": ["mode", "order"], "session_id_seen": session_id}


async def test_a_handler_that_raises_is_filed_as_failed_with_its_error(
    orchestrator: Worker, worker: AgentWorker, queue: ArqRedis
) -> None:
    session_id = await send_event(queue, new_room(), {"mode": "raise"})

    report = await result(queue, session_id)
    await assert_only_result(queue, session_id, worker)
    assert (report.status, report.source) == ("failed", "agent")
    assert report.error == "RuntimeError: the test handler failed on purpose"


async def test_end_session_deletes_the_dispatch_and_the_report_says_why(
    orchestrator: Worker, worker: AgentWorker, queue: ArqRedis
) -> None:
    session_id = await send_event(queue, new_room(), {"mode": "wait"})
    await worker.wait_log("session started", session_id=session_id)

    await enqueue_end_session(queue, EndSessionRequest(session_id=session_id))

    # livekit-agents gives an entrypoint that neither joined nor returned 15 s to finish.
    report = await result(queue, session_id, timeout_s=45)
    await assert_only_result(queue, session_id, worker)
    assert (report.status, report.source) == ("completed", "agent")
    assert report.end_reason == "the dispatch was deleted (end_session or DeleteDispatch)"


async def test_a_killed_agent_is_reported_lost_and_the_room_is_dispatched_again(
    orchestrator: Worker, worker: AgentWorker, queue: ArqRedis, tmp_path: Path
) -> None:
    room = new_room()
    never = str(tmp_path / "never")
    session_id = await send_event(queue, room, {"mode": "hold", "release_file": never})
    started = await worker.wait_log("session started", session_id=session_id)
    # The orchestrator tells a dead agent by its stale heartbeat: it must have seen one.
    await eventually(
        lambda: queue.exists(agent_heartbeat_key(session_id)), what="the session's heartbeat"
    )
    # With its first beat the agent said which job it took: the assignment check reads it.
    dispatch_id = await queue.hget(session_key(session_id), "dispatch_id")  # type: ignore[misc]
    assert await agent_job(queue, session_id) == AgentJob(
        dispatch_id.decode(), started["job_id"], started["worker_id"]
    )

    os.kill(started["pid"], signal.SIGKILL)  # the job process: no shutdown code runs

    report = await result(queue, session_id, timeout_s=REPORT_GRACE_S + 30)
    await assert_only_result(queue, session_id, worker)
    assert (report.status, report.source) == ("lost", "orchestrator")
    assert not worker.find("session report enqueued", session_id=session_id)

    again = await send_event(queue, room, {"mode": "finish"})
    second = await result(queue, again)
    assert (second.status, second.source, second.room) == ("completed", "agent", room)
    await assert_only_result(queue, again, worker)


async def test_end_session_deleting_the_room_ends_a_connected_session(
    orchestrator: Worker, worker: AgentWorker, queue: ArqRedis, sim: LiveKitSim
) -> None:
    room = new_room()
    session_id = await send_event(queue, room, {"mode": "greeter"})
    await worker.wait_log("joined the room", session_id=session_id, timeout_s=60)
    assert any(p.identity == f"agent-{session_id}" for p in sim.participants(room))

    await enqueue_end_session(queue, EndSessionRequest(session_id=session_id, delete_room=True))

    report = await result(queue, session_id)
    await assert_only_result(queue, session_id, worker)
    assert (report.status, report.source) == ("completed", "agent")
    assert report.end_reason in ROOM_GONE, report.end_reason
