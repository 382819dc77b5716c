"""The wire contract: events in, job metadata to the agent, session reports out.

Every model has a `type` literal and a `version`, so a consumer can tell what it holds and a
later change can be told apart. Field limits are LiveKit's, checked before any call reaches it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from tasks.keys import PRIORITY_MAX, PRIORITY_MIN

# LiveKit limits (livekit-server `pkg/config/config.go`, LimitConfig). Dispatch metadata is
# capped at 512 KiB from server v1.13.2 and at 64000 bytes for room/participant metadata
# before it; we hold job metadata to the older, smaller limit so every server accepts it.
MAX_METADATA_BYTES = 64_000
MAX_ROOM_NAME_BYTES = 256
MAX_EVENT_ID_CHARS = 200
MAX_AGENT_NAME_CHARS = 128

EVENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@/+=-]+$")
AGENT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# What the JSON schema (the HTTP API's OpenAPI document) says of these fields, so that a client
# generated from it sends only what is accepted. A room's limit is in bytes, which JSON Schema
# cannot count: the schema allows rooms of up to 64 characters of any kind (at most 256
# bytes in UTF-8), or up to 256 printable ASCII characters; the API takes any room of at most
# 256 bytes.
ROOM_SCHEMA: dict[str, Any] = {
    "minLength": 1,
    "pattern": "^[^\\u0000-\\u001f\\u007f]*$",
    "allOf": [{"anyOf": [{"maxLength": 64}, {"pattern": "^[\\u0020-\\u007e]{0,256}$"}]}],
    "description": "The LiveKit room: at most 256 bytes in UTF-8, no control characters",
}
EVENT_ID_SCHEMA: dict[str, Any] = {"pattern": "^[A-Za-z0-9._:@/+=-]+$"}
AGENT_NAME_SCHEMA: dict[str, Any] = {
    "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$",
    "maxLength": 128,
}

ReportStatus = Literal["completed", "failed", "lost"]
RestartPolicy = Literal["on_failure", "never"]
DispatchOutcome = Literal[
    "dispatched",
    "waiting",
    "deduplicated",
    "duplicate_event",
    "expired",
    "failed",
    "rejected",
    "withdrawn",
]
"""What became of a dispatch event: the `outcome` of its job's result (README, "From Python")."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("must carry a timezone (for example 2026-11-21T14:00:00Z)")
    return value


def check_room(room: str) -> str:
    if not room:
        raise ValueError("must not be empty")
    if len(room.encode()) > MAX_ROOM_NAME_BYTES:
        raise ValueError(f"is over LiveKit's {MAX_ROOM_NAME_BYTES}-byte room name limit")
    if _CONTROL.search(room):
        raise ValueError("must not contain control characters")
    return room


def check_agent_name(name: str) -> str:
    if len(name) > MAX_AGENT_NAME_CHARS or not AGENT_NAME_PATTERN.match(name):
        raise ValueError(
            f"{name!r} is not a valid agent name: use letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, at most {MAX_AGENT_NAME_CHARS} characters"
        )
    return name


def session_id_for(event_id: str, generation: int = 0, restart: int = 0) -> str:
    """The session id of an event's dispatch; stable across retries so a retry can adopt
    the dispatch an earlier try created. `generation` counts dead-letter replays, `restart`
    the sessions that replaced one whose agent died (failover)."""
    name = f"{event_id}\x00{generation}" + (f"\x00r{restart}" if restart else "")
    digest = hashlib.blake2b(name.encode(), digest_size=10).hexdigest()
    return f"S_{digest}"


class DispatchRequest(_Model):
    """An upstream event asking for one agent in `room`."""

    type: Literal["dispatch"] = "dispatch"
    version: Literal[1] = 1
    event_id: str = Field(
        min_length=1, max_length=MAX_EVENT_ID_CHARS, json_schema_extra=EVENT_ID_SCHEMA
    )
    room: str = Field(json_schema_extra=ROOM_SCHEMA)
    agent_name: str | None = Field(None, json_schema_extra=AGENT_NAME_SCHEMA)
    """Falls back to the orchestrator's configured default agent name."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """The producer's payload; reaches the agent inside the job metadata."""
    expires_at: datetime | None = None
    """An event still waiting at this time is dropped with outcome `expired`."""
    not_before: datetime | None = None
    """Deferred dispatch: not before this time."""
    restart_policy: RestartPolicy = "on_failure"
    """Whether a session whose agent died may get a new agent: "on_failure" (LiveKit's
    default) or "never". Passed on in CreateDispatch: LiveKit Cloud restarts a failed job by
    itself; a self-hosted server stores and echoes it and never restarts."""
    priority: int = Field(0, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    """Its place in the agent name's waiting line when the agents are full: higher first,
    first come first served within a priority."""
    _job_metadata: tuple[str, str] = PrivateAttr(default=("", ""))
    """(session id, its job metadata JSON), as the size check made it."""

    @field_validator("event_id")
    @classmethod
    def _event_id(cls, value: str) -> str:
        if not EVENT_ID_PATTERN.match(value):
            raise ValueError("may hold only letters, digits and . _ : @ / + = - (no spaces)")
        return value

    @field_validator("room")
    @classmethod
    def _room(cls, value: str) -> str:
        return check_room(value)

    @field_validator("agent_name")
    @classmethod
    def _agent_name(cls, value: str | None) -> str | None:
        return None if value is None else check_agent_name(value)

    @field_validator("expires_at", "not_before")
    @classmethod
    def _tz(cls, value: datetime | None) -> datetime | None:
        return _aware(value)

    @model_validator(mode="after")
    def _metadata_fits(self) -> DispatchRequest:
        session_id = session_id_for(self.event_id)
        job_metadata = self.job_metadata(session_id)
        self._job_metadata = (session_id, job_metadata)
        size = len(job_metadata.encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(
                f"metadata makes a {size}-byte job metadata, over LiveKit's "
                f"{MAX_METADATA_BYTES}-byte limit: send a reference instead of the data"
            )
        return self

    def job_metadata(self, session_id: str) -> str:
        """The job metadata (JSON) that carries this event to the agent of `session_id`."""
        made_for, made = self._job_metadata
        if made_for == session_id:  # the first session's: made by the size check already
            return made
        return JobMetadata(
            session_id=session_id, event_id=self.event_id, metadata=self.metadata
        ).to_json()


MAX_CHECKPOINT_BYTES = 16_000
"""A session's checkpoint (`SessionContext.checkpoint`), as JSON: it rides in a replacement's
job metadata, beside the producer's payload, within MAX_METADATA_BYTES."""


class Resume(_Model):
    """In a replacement's job metadata: the session it takes over from, whose agent died."""

    previous_session_id: str
    attempt: int = Field(ge=1)
    """1 for the first replacement of the event's session, 2 for the next, ..."""
    previous_status: ReportStatus = "lost"
    previous_error: str = ""
    """How the previous session ended (its report's `error`)."""
    checkpoint: dict[str, Any] | None = None
    """The last checkpoint a session of this event saved, if any."""


class JobMetadata(_Model):
    """What the agent finds in `ctx.job.metadata` (a JSON object)."""

    type: Literal["lkd.job"] = "lkd.job"
    version: Literal[1] = 1
    session_id: str
    event_id: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    probe: bool = False
    """`orchestrator doctor`'s test job: the agent takes it and ends it at once, unreported."""
    resume: Resume | None = None
    """Set when this session replaces one whose agent died (failover)."""

    def to_json(self) -> str:
        return self.model_dump_json()


class EndSessionRequest(_Model):
    """End a session by its id or by its room: the agent leaves, or everyone does."""

    type: Literal["end_session"] = "end_session"
    version: Literal[1] = 1
    session_id: str | None = None
    room: str | None = Field(None, json_schema_extra=ROOM_SCHEMA)
    delete_room: bool = False
    """False: delete the dispatch (the agent leaves). True: delete the room (everyone leaves)."""
    reason: str = Field(default="ended by request", max_length=500)

    @field_validator("room")
    @classmethod
    def _room(cls, value: str | None) -> str | None:
        return None if value is None else check_room(value)

    @model_validator(mode="after")
    def _one_target(self) -> EndSessionRequest:
        if (self.session_id is None) == (self.room is None):
            raise ValueError("give exactly one of session_id and room")
        return self


class ParticipantRecord(_Model):
    identity: str
    kind: str = "standard"
    joined_at: datetime | None = None
    left_at: datetime | None = None
    speaking_time_s: float | None = None


class SessionReport(_Model):
    """The one terminal record of a session, as filed on the results stream."""

    type: Literal["session_report"] = "session_report"
    version: Literal[1] = 1
    session_id: str
    event_id: str
    room: str
    status: ReportStatus
    agent_name: str | None = None
    dispatch_id: str | None = None
    job_id: str | None = None
    worker_id: str | None = None
    started_at: datetime | None = None
    ended_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    duration_s: float | None = None
    end_reason: str = ""
    error: str | None = None
    participants: list[ParticipantRecord] = Field(default_factory=list)
    outputs: dict[str, Any] = Field(default_factory=dict)
    source: Literal["agent", "orchestrator"] = "agent"
    """Who wrote it: the agent, or the orchestrator (failed dispatch, lost agent)."""
    replaces: str | None = None
    """The session this one replaced (its agent died with people still in the room)."""
    replaced_by: str | None = None
    """The session that replaced this one (set on a `lost` report)."""
    part_of: str | None = None
    """With AGENT_JOB_TYPE=publisher: the event's session this job was one part of."""
    publisher: str | None = None
    """With AGENT_JOB_TYPE=publisher: the identity of the participant the job was for."""

    @field_validator("started_at", "ended_at")
    @classmethod
    def _tz(cls, value: datetime | None) -> datetime | None:
        return _aware(value)

    @model_validator(mode="after")
    def _failure_has_reason(self) -> SessionReport:
        if self.status != "completed" and not self.error:
            raise ValueError(f"a {self.status} report needs an error saying why")
        return self
