"""The session handler of the agent tests, plugged in through AGENT_SESSION_HANDLER.

The sim has no media, so `ctx.connect()` cannot succeed there: apart from "greeter" (the
default handler, which connects), these modes never join the room. The producer's payload
picks the mode.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.handlers import SessionContext, greeter


async def scripted(session: SessionContext) -> str | None:
    """`mode`: "finish" (default) returns at once; "raise" fails; "wait" runs until the session
    is ended from outside; "hold" returns once the file `release_file` exists; "greeter" runs
    the default handler. A first session saves the payload's `checkpoint` (if any); one that
    replaces another puts its `resume` in its outputs."""
    payload = session.payload
    mode = payload.get("mode", "finish")
    session.outputs["payload_keys"] = sorted(payload)
    session.outputs["session_id_seen"] = session.metadata.session_id
    if session.resume is not None:
        session.outputs["resume"] = session.resume.model_dump(mode="json")
    if "checkpoint" in payload and session.resume is None:
        await session.checkpoint(payload["checkpoint"])
        session.log.info("checkpoint saved")
    session.log.info("test handler running", mode=mode)
    if mode == "raise":
        raise RuntimeError("the test handler failed on purpose")
    if mode == "wait":
        await asyncio.Event().wait()
    if mode == "hold":
        release = Path(str(payload["release_file"]))
        while True:  # the test process creates the file: nothing to await but the file system
            if await asyncio.to_thread(release.exists):
                break
            await asyncio.sleep(0.05)
    if mode == "greeter":
        return await greeter(session)
    return "test handler finished"
