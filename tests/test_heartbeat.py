"""The agent's record of the job it took: read back only when it names three ids."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis

from tasks.heartbeat import AgentJob, agent_job, beat
from tasks.keys import agent_heartbeat_key, agent_job_key

pytestmark = pytest.mark.integration


async def test_the_first_beat_names_the_job_and_later_beats_only_refresh(redis: Redis) -> None:
    job = AgentJob(dispatch_id="AD_1", job_id="AJ_1", worker_id="AW_1")
    await beat(redis, "S_1", job)
    assert await agent_job(redis, "S_1") == job
    await redis.delete(agent_job_key("S_1"))
    await beat(redis, "S_1")
    assert await redis.exists(agent_heartbeat_key("S_1")) == 1
    assert await agent_job(redis, "S_1") is None


@pytest.mark.parametrize(
    "stored",
    [
        "not json",
        json.dumps(["AD_1", "AJ_1", "AW_1"]),
        json.dumps({"dispatch_id": "AD_1", "job_id": {"id": "AJ_1"}, "worker_id": "AW_1"}),
        json.dumps({"dispatch_id": "AD_1", "job_id": None, "worker_id": "AW_1"}),
        json.dumps({"dispatch_id": "", "job_id": "AJ_1", "worker_id": "AW_1"}),
        json.dumps({"dispatch_id": "AD_1", "job_id": "AJ_1"}),
    ],
)
async def test_a_record_without_three_ids_is_no_word_at_all(redis: Redis, stored: str) -> None:
    await redis.set(agent_job_key("S_2"), stored)
    assert await agent_job(redis, "S_2") is None


async def test_fields_a_later_agent_adds_are_ignored(redis: Redis) -> None:
    record = {"dispatch_id": "AD_3", "job_id": "AJ_3", "worker_id": "AW_3", "region": "eu"}
    await redis.set(agent_job_key("S_3"), json.dumps(record))
    assert await agent_job(redis, "S_3") == AgentJob("AD_3", "AJ_3", "AW_3")
