"""Session handlers: the user's code that runs one session, and where it plugs in.

A handler is an async function taking a `SessionContext`:

    async def my_handler(session: SessionContext) -> str | None:
        await session.job.connect()
        ...
        session.outputs["summary"] = "..."
        return "call finished"          # the report's end_reason (optional)

It is named by the `AGENT_SESSION_HANDLER` setting (`package.module:function`, default
`agent.handlers:greeter`) and loaded once per job process. The session ends when the handler
returns (report status `completed`) or raises (status `failed`, with the error). When the
session is ended from outside (the dispatch or room deleted, the room disconnected), the
handler is cancelled: clean up in `finally`. Outputs written before that are kept.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from livekit.agents import JobContext
from structlog.stdlib import BoundLogger

from agent.errors import HandlerLoadError
from agent.participants import ParticipantTracker
from agent.settings import AgentSettings
from tasks.models import JobMetadata


@dataclass
class SessionContext:
    """What a handler gets: the LiveKit job, the parsed metadata, and where to put results."""

    job: JobContext
    """livekit-agents' JobContext: `connect()`, `room`, `api`, ... (not connected yet)."""
    metadata: JobMetadata
    """The orchestrator's job metadata: `session_id`, `event_id`, and the producer's payload."""
    participants: ParticipantTracker
    """Who is and was in the room; `wait_for_human()`, `wait_until_no_humans()`."""
    settings: AgentSettings
    log: BoundLogger
    """A logger with the session's ids bound; never log the payload's values."""
    outputs: dict[str, Any] = field(default_factory=dict)
    """Copied into the report's `outputs` (JSON values, at most 256 kB)."""

    @property
    def payload(self) -> dict[str, Any]:
        """The producer's `metadata` from the event."""
        return self.metadata.metadata


class SessionHandler(Protocol):
    def __call__(self, session: SessionContext, /) -> Awaitable[str | None]: ...


def load_handler(path: str) -> SessionHandler:
    """The handler named by `package.module:function`; HandlerLoadError saying what failed."""
    module_name, _, attr_path = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise HandlerLoadError(
            f"cannot import the session handler module {module_name!r} (AGENT_SESSION_HANDLER="
            f"{path!r}): {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerLoadError(
                f"{module_name!r} has no {attr_path!r} (AGENT_SESSION_HANDLER={path!r})"
            ) from None
    if not callable(target):
        raise HandlerLoadError(f"AGENT_SESSION_HANDLER={path!r} is not callable")
    handler: SessionHandler = target
    return handler


async def greeter(session: SessionContext) -> str:
    """The default handler, a programmatic participant: joins the room, greets the first
    person on the greeting topic (when it may send data), and ends the session once every
    person has left. The report gives each participant's speaking time, measured from the
    audio it published."""
    settings = session.settings
    session.participants.measure_speaking(session.job.room)
    await session.job.connect()
    session.log.info("joined the room")
    if not await session.participants.wait_for_human(settings.first_participant_timeout_s):
        return f"nobody joined within {settings.first_participant_timeout_s:g} s"
    if settings.can_publish_data:
        await session.job.room.local_participant.send_text(
            settings.greeting_text, topic=settings.greeting_topic
        )
        session.outputs["greeted_at"] = datetime.now(UTC).isoformat()
    else:
        session.log.info("no greeting: AGENT_CAN_PUBLISH_DATA=false")
    await session.participants.wait_until_no_humans()
    session.outputs["people_seen"] = session.participants.humans_seen
    return "every participant left"
