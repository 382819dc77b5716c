"""Session handlers for benchmarks, plugged in through AGENT_SESSION_HANDLER."""

from __future__ import annotations

import asyncio

from agent.handlers import SessionContext


async def timed(session: SessionContext) -> str:
    """A session that lasts `hold_s` seconds of its payload (a call of that length), without
    joining the room."""
    hold_s = float(session.payload.get("hold_s", 1.0))
    await asyncio.sleep(hold_s)
    return f"held {hold_s:g} s"
