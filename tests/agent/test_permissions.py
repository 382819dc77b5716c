"""The agent worker's permissions (AGENT_CAN_PUBLISH, AGENT_CAN_SUBSCRIBE,
AGENT_CAN_PUBLISH_DATA, AGENT_CAN_UPDATE_METADATA, AGENT_HIDDEN) reach livekit-agents, which
registers them with LiveKit; LiveKit puts them in the agent's token, and the room holds the
agent to them. Here: a hidden agent that may neither publish nor send data."""

from __future__ import annotations

import pytest
from livekit import api
from livekit.protocol import models
from redis.asyncio import Redis

from livekit_sim import LiveKitSim
from tasks.heartbeat import worker_records
from tests.agent.conftest import new_job, new_room
from tests.agent.reports import wait_for_report
from tests.agent.test_worker import dispatch
from tests.agent.worker_process import AgentWorker

pytestmark = [pytest.mark.system, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def worker_overrides() -> dict[str, str]:
    return {
        "AGENT_HIDDEN": "true",
        "AGENT_CAN_PUBLISH": "false",
        "AGENT_CAN_PUBLISH_DATA": "false",
        "AGENT_CAN_UPDATE_METADATA": "false",
    }


async def test_a_hidden_agent_without_publish_rights_runs_its_session_quietly(
    worker: AgentWorker, sim: LiveKitSim, lkapi: api.LiveKitAPI, agent_redis: Redis,
    agent_name: str,
) -> None:  # fmt: skip
    session_id, _, metadata = new_job({"mode": "greeter"})
    room = new_room()
    await dispatch(lkapi, sim, agent_name, room, metadata)
    await worker.wait_log("joined the room", session_id=session_id, timeout_s=60)
    [me] = [p for p in sim.participants(room) if p.identity == f"agent-{session_id}"]
    assert me.kind == models.ParticipantInfo.Kind.AGENT
    granted = me.permission
    assert (granted.hidden, granted.can_publish, granted.can_publish_data) == (True, False, False)
    assert (granted.can_subscribe, granted.can_update_metadata) == (True, False)

    await sim.join_participant(room, "caller-1")
    await worker.wait_log("no greeting: AGENT_CAN_PUBLISH_DATA=false", session_id=session_id)
    await sim.leave_participant(room, "caller-1")

    report = await wait_for_report(agent_redis, session_id)
    assert (report.status, report.end_reason) == ("completed", "every participant left")
    assert [p.identity for p in report.participants] == ["caller-1"]
    assert "greeted_at" not in report.outputs
    assert sim.media.log_of(room).texts == []


async def test_the_worker_record_says_what_its_agents_may_do(
    worker: AgentWorker, agent_redis: Redis, agent_name: str
) -> None:
    [record] = [r for r in await worker_records(agent_redis, 0) if r.agent_name == agent_name]
    assert record.permissions == {
        "can_publish": False,
        "can_subscribe": True,
        "can_publish_data": False,
        "can_update_metadata": False,
        "hidden": True,
    }
