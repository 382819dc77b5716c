"""Agents that nobody dispatched through us: how to recognise one, and what to do about it.

Two LiveKit features put an agent in a room beside our explicit dispatch:
- a participant token whose room configuration names agents (`roomConfig.agents`), or
  CreateRoom's `agents`: acted on only when that join or call creates the room
  (livekit/livekit#4390), so beside our dispatch they give zero agents or two;
- automatic dispatch: every room created without agents gets a dispatch for agent_name "",
  which any worker registered without an agent_name takes.

`orchestrator doctor` finds them in LiveKit's dispatch lists; the webhook receiver sees them
join. Both say it once, with the fix below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from livekit import api

from orchestrator.gateway import dispatch_session_id

AGENT_NAME_ATTRIBUTES = ("lk.agent_name", "lk.agent.name")
"""Where an agent participant names its worker's agent_name: the attribute LiveKit's server
adds to every agent token, then the one livekit-agents sets itself."""

_AUTOMATIC = (
    "an agent worker registered without an agent_name takes every new room "
    "(LiveKit's automatic dispatch): give each worker an agent_name (AGENT_NAME for "
    "ours, `agent_name=` in WorkerOptions/AgentServer for others), so that only "
    "lk-dispatch sends it rooms"
)
_CONFIGURED = (
    "a participant token with a room configuration naming agents "
    "(`with_room_config(...agents=...)`), CreateRoom with `agents`, or another dispatcher: "
    "drop the agents from tokens and rooms and dispatch only through lk-dispatch, or a room "
    "gets zero agents or two (README: Joining the room)"
)


@dataclass(frozen=True)
class StrayDispatch:
    room: str
    agent_name: str
    jobs: int
    """Jobs LiveKit gave it: an agent that took it, or did and left."""


def stray_dispatches(room: str, dispatches: list[api.AgentDispatch]) -> list[StrayDispatch]:
    """The dispatches of `room` that we did not make and that put an agent in it. LiveKit's
    implicit dispatch for agent_name "" counts only once a worker took it."""
    return [
        StrayDispatch(room, d.agent_name, len(d.state.jobs))
        for d in dispatches
        if dispatch_session_id(d) is None and d.state.jobs
    ]


def agent_name_of(attributes: Mapping[str, str]) -> str | None:
    """The agent_name an agent participant's attributes give, None when they give none."""
    return next((attributes[a] for a in AGENT_NAME_ATTRIBUTES if a in attributes), None)


def stray_fix(agent_name: str | None) -> str:
    """What to change so that every agent comes from a dispatch of ours; `agent_name` None
    when it is not known."""
    if agent_name is None:
        return f"either {_AUTOMATIC}; or {_CONFIGURED}"
    if not agent_name:
        return _AUTOMATIC
    return f"something other than lk-dispatch asked for agent_name={agent_name!r}: {_CONFIGURED}"
