"""Our agent workers size the waiting line with their heartbeats: one that starts lets
waiting sessions out at once, one that is SIGKILLed takes its slots away. The orchestrator
runs in this process; the agents are real worker processes (`python -m agent start`), each
taking AGENT_MAX_SESSIONS (2) sessions."""

from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

import pytest
from arq import ArqRedis

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.store.sessions import SessionStore
from tasks import recent_results
from tests.agent.conftest import MAX_SESSIONS, new_room, worker_env
from tests.agent.worker_process import AgentWorker
from tests.support.events import send_event
from tests.support.orchestrator_worker import running_orchestrator, settings_for
from tests.support.waiting import eventually

pytestmark = [pytest.mark.system, pytest.mark.asyncio(loop_scope="module")]


async def statuses(queue: ArqRedis, session_ids: list[str]) -> collections.Counter[str]:
    store = SessionStore(queue, retention_s=60, event_retention_s=60)
    found = [await store.get(sid) for sid in session_ids]
    return collections.Counter(str(s.status) if s else "gone" for s in found)


async def test_a_new_worker_lets_the_line_out_and_a_killed_one_takes_its_slots_away(
    worker: AgentWorker,
    sim: LiveKitSim,
    agent_redis_server: LocalRedis,
    agent_name: str,
    queue: ArqRedis,
    tmp_path: Path,
) -> None:
    settings = settings_for(
        agent_redis_server.url,
        sim,
        agent_name,
        assignment_check_delay_s=1.0,
        report_grace_s=3.0,
        agent_worker_timeout_s=2.0,
    )
    release = tmp_path / "release"
    hold = {"mode": "hold", "release_file": str(release)}
    async with running_orchestrator(settings):
        sessions = [await send_event(queue, new_room(), hold) for _ in range(6)]
        await eventually(
            lambda: _are(queue, sessions, assigned=MAX_SESSIONS, waiting=4),
            timeout_s=20,
            what="the worker's 2 slots in use, 4 waiting",
        )

        second = AgentWorker(
            worker_env(sim, agent_redis_server.url, agent_name), tmp_path / "second.log"
        ).start()
        try:
            await second.wait_registered(agent_name)
            # No session ended: the new worker's slots let 2 more out.
            await eventually(
                lambda: _are(queue, sessions, assigned=4, waiting=2),
                timeout_s=20,
                what="2 let out onto the new worker",
            )
            assert second.proc is not None
            os.killpg(second.proc.pid, signal.SIGKILL)
            second.proc.wait()
        finally:
            await second.stop()

        # Its sessions end `lost`; its slots went with its heartbeat, so those freed let
        # nobody out: the first worker's 2 slots are still in use.
        await eventually(
            lambda: _are(queue, sessions, assigned=2, lost=2, waiting=2),
            timeout_s=30,
            what="the killed worker's sessions lost",
        )
        assert await _are(queue, sessions, assigned=2, lost=2, waiting=2)

        release.touch()
        await eventually(
            lambda: _are(queue, sessions, completed=4, lost=2),
            timeout_s=40,
            what="the rest served by the first worker",
        )
    reports = [e.report for e in await recent_results(queue, 1000)]
    mine = collections.Counter(r.session_id for r in reports if r.session_id in sessions)
    assert sorted(mine.values()) == [1] * 6
    assert sim.most_jobs_at_once(agent_name=agent_name) <= 2 * MAX_SESSIONS


async def _are(queue: ArqRedis, session_ids: list[str], **wanted: int) -> bool:
    found = await statuses(queue, session_ids)
    return dict(found) == wanted
