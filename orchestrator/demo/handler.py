"""The session handler the demo plugs into its agent worker (AGENT_SESSION_HANDLER=
`orchestrator.demo.handler:demo_session`). It runs inside the agent's job processes.

It never joins the room's media (the LiveKit sim has none), so it watches the room through
the server API instead: a session either "talks" for a few seconds, or waits for a caller and
ends when the caller hangs up. It imports nothing from `agent` (the orchestrator and the agent
meet only through `tasks` and Redis): it uses the documented shape of the handler's argument.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from livekit import api
from livekit.protocol import models

POLL_INTERVAL_S = 0.5
HUMAN_KINDS = (models.ParticipantInfo.Kind.STANDARD, models.ParticipantInfo.Kind.SIP)


class _Session(Protocol):
    """The part of the agent's SessionContext this handler uses."""

    job: Any
    outputs: dict[str, Any]

    @property
    def payload(self) -> dict[str, Any]: ...


async def demo_session(session: _Session) -> str:
    """`payload["demo"]`: {"talk_s": N} holds the session N seconds; {"wait_for_caller": true,
    "caller_timeout_s": N} waits for a caller and ends when they have left."""
    options = session.payload.get("demo") or {}
    if options.get("wait_for_caller"):
        return await _until_caller_leaves(session, float(options.get("caller_timeout_s", 60)))
    talk_s = float(options.get("talk_s", 5))
    await asyncio.sleep(talk_s)
    session.outputs["talked_s"] = talk_s
    return "demo conversation finished"


async def _until_caller_leaves(session: _Session, timeout_s: float) -> str:
    room = session.job.job.room.name
    lkapi: api.LiveKitAPI = session.job.api
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        present = {p.identity for p in reply.participants if p.kind in HUMAN_KINDS}
        if present - seen:
            seen |= present
            session.outputs["callers"] = len(seen)
        if seen and not present:
            return "the caller hung up"
        if not seen and time.monotonic() > deadline:
            return f"no caller joined within {timeout_s:g} s"
        await asyncio.sleep(POLL_INTERVAL_S)
