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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from livekit.agents import JobContext
from structlog.stdlib import BoundLogger

from agent.errors import HandlerLoadError
from agent.participants import ParticipantTracker
from agent.settings import AgentSettings
from tasks.checkpoints import encode_checkpoint
from tasks.models import JobMetadata, Resume


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
    saver: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    """Where `checkpoint()` keeps a checkpoint (the agent's session sets it)."""
    publisher: str | None = None
    """With AGENT_JOB_TYPE=publisher: the identity of the participant this job is for (the
    session is then a part of the event's: `metadata.session_id` names that one)."""

    @property
    def payload(self) -> dict[str, Any]:
        """The producer's `metadata` from the event."""
        return self.metadata.metadata

    @property
    def resume(self) -> Resume | None:
        """Set when this session replaces one whose agent died: `previous_session_id`,
        `attempt`, how it ended, and the last `checkpoint` saved before."""
        return self.metadata.resume

    async def checkpoint(self, data: dict[str, Any]) -> None:
        """Save the session's progress (a JSON object of at most 16,000 bytes; the last one
        counts). Should the agent die with people in the room, the session that replaces it
        finds it in `resume.checkpoint`, to go on from there. ValueError if `data` is not
        JSON or too big; a Redis error if it could not be saved."""
        encode_checkpoint(data)
        if self.saver is None:
            raise RuntimeError("this session has no store for checkpoints")
        await self.saver(data)


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
    audio it published. A session that replaces one whose agent died greets with
    AGENT_RESUME_GREETING_TEXT instead."""
    settings = session.settings
    session.participants.measure_speaking(session.job.room)
    await session.job.connect()
    session.log.info("joined the room")
    if not await session.participants.wait_for_human(settings.first_participant_timeout_s):
        return f"nobody joined within {settings.first_participant_timeout_s:g} s"
    if settings.can_publish_data:
        # A replacement (its agent died mid-call) says so, so that the caller hears why.
        greeting = settings.resume_greeting_text if session.resume else settings.greeting_text
        await session.job.room.local_participant.send_text(greeting, topic=settings.greeting_topic)
        session.outputs["greeted_at"] = datetime.now(UTC).isoformat()
        if session.resume:
            session.outputs["resumed_from"] = session.resume.previous_session_id
    else:
        session.log.info("no greeting: AGENT_CAN_PUBLISH_DATA=false")
    await session.participants.wait_until_no_humans()
    session.outputs["people_seen"] = session.participants.humans_seen
    return "every participant left"
