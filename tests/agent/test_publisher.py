"""AGENT_JOB_TYPE=publisher with the real agent worker: one event, one dispatch; LiveKit (the
sim) starts a job for each participant that publishes, those publishing already included.
Each job is a part of the event's session with exactly one report; a part whose process dies
is `lost` alone; the event's session ends with a report naming its parts.
"""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from arq import ArqRedis
from arq.worker import Worker

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.store.record import Session
from orchestrator.store.sessions import SessionStore
from tasks import EndSessionRequest, SessionReport, enqueue_end_session, recent_results
from tasks.heartbeat import worker_records
from tests.agent.conftest import new_room
from tests.agent.worker_process import AgentWorker
from tests.support.events import send_event
from tests.support.orchestrator_worker import running_orchestrator, settings_for
from tests.support.waiting import eventually

pytestmark = [pytest.mark.system, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def worker_overrides() -> dict[str, str]:
    return {"AGENT_JOB_TYPE": "publisher"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def orchestrator(
    agent_redis_server: LocalRedis, sim: LiveKitSim, agent_name: str, worker: AgentWorker
) -> AsyncIterator[Worker]:
    settings = settings_for(
        agent_redis_server.url, sim, agent_name, assignment_check_delay_s=0.5, report_grace_s=120
    )
    async with running_orchestrator(settings) as arq_worker:
        yield arq_worker


def parts_started(worker: AgentWorker, session_id: str) -> dict[str, dict[str, object]]:
    """The parts of `session_id` whose session started, by part id."""
    return {
        str(line["session_id"]): line
        for line in worker.find("session started")
        if str(line.get("session_id", "")).startswith(session_id + ".")
    }


async def reports(queue: ArqRedis) -> list[SessionReport]:
    return [entry.report for entry in await recent_results(queue, 1000)]


async def record(queue: ArqRedis, session_id: str) -> Session | None:
    return await SessionStore(queue, retention_s=60, event_retention_s=60).get(session_id)


async def test_a_job_per_publisher_each_a_part_with_its_one_report(
    orchestrator: Worker, worker: AgentWorker, sim: LiveKitSim, queue: ArqRedis, tmp_path: Path
) -> None:
    assert [r.job_type for r in await worker_records(queue, 0)] == ["publisher"]
    room = new_room()
    await sim.join_participant(room, "speaker-1", audio=True)  # publishing before the event
    await sim.join_participant(room, "listener")  # publishes nothing: no job
    release = tmp_path / "release"
    session_id = await send_event(queue, room, {"mode": "hold", "release_file": str(release)})
    [first] = await eventually(lambda: parts_started(worker, session_id), what="a first part")

    async def assigned() -> Session | None:
        found = await record(queue, session_id)
        return found if found and found.status == "assigned" else None

    event_session = await eventually(assigned, what="the event's session assigned")
    assert event_session.job_type == "publisher"
    await sim.join_participant(room, "speaker-2", audio=True)
    both = await eventually(
        lambda: len(parts_started(worker, session_id)) == 2 and parts_started(worker, session_id),
        what="a part for the second publisher",
    )
    [second] = [p for p in both if p != first]

    os.kill(int(str(both[second]["pid"])), signal.SIGKILL)  # one part's process dies

    async def lost() -> SessionReport | None:
        return next((r for r in await reports(queue) if r.session_id == second), None)

    dead = await eventually(lost, timeout_s=20, what="the dead part's report")
    assert (dead.status, dead.part_of, dead.publisher, dead.replaced_by) == (
        "lost",
        session_id,
        "speaker-2",
        None,
    )
    still = await record(queue, session_id)
    assert still is not None
    assert still.status == "assigned"  # the other part and the session go on

    release.touch()

    async def completed() -> SessionReport | None:
        return next((r for r in await reports(queue) if r.session_id == first), None)

    done = await eventually(completed, what="the first part's report")
    assert (done.status, done.source, done.part_of, done.publisher) == (
        "completed",
        "agent",
        session_id,
        "speaker-1",
    )
    await enqueue_end_session(queue, EndSessionRequest(session_id=session_id))

    async def closed() -> SessionReport | None:
        return next((r for r in await reports(queue) if r.session_id == session_id), None)

    whole = await eventually(closed, what="the event's session report")
    assert (whole.status, whole.source, whole.end_reason) == (
        "completed",
        "orchestrator",
        "ended by request",
    )
    assert whole.outputs == {"parts": sorted([first, second])}
    counted = collections.Counter(r.session_id for r in await reports(queue))
    assert {sid: counted[sid] for sid in (session_id, first, second)} == {
        session_id: 1,
        first: 1,
        second: 1,
    }
    assert len(sim.jobs_in(room)) == 2  # no job for the listener, none for the room itself
