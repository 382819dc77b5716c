"""A job process that dies without its report is told at once by its worker's main process:
the session ends `lost` without waiting for its heartbeat's silence (here the grace for that
is two minutes, far past the test's patience). One that ends as it should tells nothing."""

from __future__ import annotations

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
from tasks import SessionReport, recent_results
from tasks.keys import ARQ_JOB_PREFIX, ARQ_RESULT_PREFIX, agent_exited_job_id
from tests.agent.conftest import new_room
from tests.agent.worker_process import AgentWorker
from tests.support.events import send_event
from tests.support.orchestrator_worker import running_orchestrator, settings_for
from tests.support.waiting import eventually

pytestmark = [pytest.mark.system, pytest.mark.asyncio(loop_scope="module")]

TOLD = "job process exited without its report: told the orchestrator"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def orchestrator(
    agent_redis_server: LocalRedis, sim: LiveKitSim, agent_name: str, worker: AgentWorker
) -> AsyncIterator[Worker]:
    settings = settings_for(
        agent_redis_server.url, sim, agent_name, assignment_check_delay_s=1.0, report_grace_s=120
    )
    async with running_orchestrator(settings) as arq_worker:
        yield arq_worker


async def report_of(queue: ArqRedis, session_id: str) -> SessionReport | None:
    for entry in await recent_results(queue, 1000):
        if entry.report.session_id == session_id:
            return entry.report
    return None


async def test_a_killed_job_process_is_lost_at_once(
    orchestrator: Worker, worker: AgentWorker, queue: ArqRedis, tmp_path: Path
) -> None:
    never = str(tmp_path / "never")
    session_id = await send_event(queue, new_room(), {"mode": "hold", "release_file": never})
    started = await worker.wait_log("session started", session_id=session_id)

    os.kill(started["pid"], signal.SIGKILL)

    report = await eventually(lambda: report_of(queue, session_id), timeout_s=20, what="lost")
    assert (report.status, report.source) == ("lost", "orchestrator")
    assert report.error is not None
    assert "job process exited without a report" in report.error
    assert worker.find(TOLD, session_id=session_id)


async def test_a_session_that_ends_well_tells_nothing(
    orchestrator: Worker, worker: AgentWorker, queue: ArqRedis
) -> None:
    session_id = await send_event(queue, new_room(), {"mode": "finish"})
    started = await worker.wait_log("session started", session_id=session_id)
    report = await eventually(lambda: report_of(queue, session_id), what="its report")
    assert (report.status, report.source) == ("completed", "agent")
    await worker.wait_idle()  # its process has exited, and was looked at

    note = agent_exited_job_id(session_id, started["job_id"])
    assert not await queue.exists(ARQ_JOB_PREFIX + note, ARQ_RESULT_PREFIX + note)
    assert not worker.find(TOLD, session_id=session_id)
