"""Which of a room's dispatches put an agent in it without us, and the fix for each cause."""

from __future__ import annotations

import pytest
from livekit import api

from orchestrator.gateway.strays import (
    StrayDispatch,
    agent_name_of,
    stray_dispatches,
    stray_fix,
)
from tasks.models import JobMetadata

pytestmark = pytest.mark.unit


def dispatch(agent_name: str, metadata: str = "", jobs: int = 1) -> api.AgentDispatch:
    state = api.AgentDispatchState(jobs=[api.Job(id=f"AJ_{n}") for n in range(jobs)])
    return api.AgentDispatch(agent_name=agent_name, metadata=metadata, state=state)


def test_only_foreign_dispatches_that_got_an_agent_are_strays() -> None:
    ours = JobMetadata(session_id="S_1", event_id="e1").to_json()
    found = stray_dispatches(
        "r",
        [
            dispatch("support", ours),  # ours
            dispatch("", jobs=0),  # LiveKit's implicit dispatch, no unnamed worker took it
            dispatch("", jobs=1),  # an unnamed worker took it: automatic dispatch
            dispatch("billing", '{"call": 7}'),  # a token's or CreateRoom's agent
        ],
    )
    assert found == [StrayDispatch("r", "", 1), StrayDispatch("r", "billing", 1)]


def test_each_cause_gets_its_fix() -> None:
    assert "give each worker an agent_name" in stray_fix("")
    assert "agent_name='billing'" in stray_fix("billing")
    assert "room configuration naming agents" in stray_fix("billing")
    unknown = stray_fix(None)
    assert "give each worker an agent_name" in unknown
    assert "room configuration naming agents" in unknown


def test_the_agent_name_comes_from_the_servers_attribute_then_livekit_agents_own() -> None:
    assert agent_name_of({"lk.agent_name": "a", "lk.agent.name": "b"}) == "a"
    assert agent_name_of({"lk.agent.name": ""}) == ""
    assert agent_name_of({"ticket": "T-1"}) is None
