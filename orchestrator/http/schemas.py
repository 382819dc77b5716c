"""The HTTP API's own models: query parameters and answers. Requests are the wire contract's
models (`tasks.models`); every answer goes through one of these, so the OpenAPI document
generated from them describes what is really sent."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.gateway.join import Join, Participant
from orchestrator.store.record import Session, SessionStatus
from tasks.models import DispatchRequest, SessionReport


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ErrorBody(_Answer):
    """Every 4xx/5xx answer: a stable `error` code and a `reason` a person can act on."""

    error: str
    reason: str


class FieldError(_Answer):
    field: str
    """Dotted path of the invalid field ("metadata.user", "room"), or "(body)"."""
    message: str
    type: str
    """pydantic's error type, e.g. "missing", "string_too_short", "value_error"."""


class ValidationErrorBody(_Answer):
    """422: the body or the query was invalid; `fields` names every invalid field."""

    error: Literal["invalid_request"] = "invalid_request"
    reason: str
    fields: list[FieldError]


class DispatchBody(DispatchRequest):
    """An event, as `tasks.DispatchRequest`, and optionally the person who will join its room."""

    participant: Participant | None = None
    """Asks for a join token for this person: the answer's `join`."""

    def request(self) -> DispatchRequest:
        """The event alone, as it goes on the queue (the participant never does)."""
        return DispatchRequest.model_validate(self.model_dump(exclude={"participant"}))


class DispatchAccepted(_Answer):
    """A dispatch request on the queue. Posting the same `event_id` again returns the same
    ids and queues nothing more."""

    job_id: str
    event_id: str
    session_id: str
    """The session this event opens. When its room already has a live session the event is
    deduplicated onto that one, and a repeated POST (or GET /v1/events/{event_id}) says so."""
    outcome: str | None = None
    """What the worker did with the event (dispatched, waiting, deduplicated, expired,
    failed, ...): the answer waits up to a second for it; null when no worker has handled it
    by then."""
    queue_position: int | None = None
    """For `waiting` (every agent of its agent name is busy): its place in the line, 1 next."""
    estimated_wait_s: float | None = None
    """For `waiting`: the expected wait, when recent sessions tell."""
    status_url: str
    join: Join | None = None
    """With a `participant` in the request: how that person joins the room."""


class EventView(_Answer):
    """The idempotency record of an event: what happened to it, and which session serves it."""

    event_id: str
    job_id: str
    session_id: str | None = None
    outcome: str | None = None


class EndSessionAccepted(_Answer):
    job_id: str
    session_id: str
    room: str


class SessionView(_Answer):
    """A session record (`orchestrator.store.record.Session`). Times are unix milliseconds."""

    session_id: str
    event_id: str = ""
    room: str = ""
    status: SessionStatus
    agent_name: str | None = None
    generation: int | None = None
    attempts: int | None = None
    """Dispatches made for the session so far."""
    dispatch_job: str | None = None
    """The arq job that dispatches the session."""
    dispatch_id: str | None = None
    confirm_job: str | None = None
    """The arq job of the current dispatch's assignment check."""
    job_id: str | None = None
    """The LiveKit job an agent runs the session in."""
    worker_id: str | None = None
    restart_policy: str | None = None
    """"never" when the event asked that its agent not be replaced; absent: on_failure."""
    priority: int | None = None
    """Its place among those waiting for the agent name's slots: higher first."""
    line_score: int | None = None
    """Present when the agent name's capacity was known at its claim: it holds a slot, or
    waits for one (`waiting`)."""
    queue_position: int | None = None
    """While `waiting`: its place in the line (1: next out)."""
    estimated_wait_s: float | None = None
    """While `waiting`: the expected wait, from recent session durations and the capacity
    (absent when nothing tells)."""
    expires_at: int | None = None
    enqueued_at: int | None = None
    claimed_at: int | None = None
    admitted_at: int | None = None
    """When it left the line for a slot that freed."""
    dispatched_at: int | None = None
    assigned_at: int | None = None
    end_requested_at: int | None = None
    gone_since: int | None = None
    """When LiveKit was seen to lose the agent."""
    ended_at: int | None = None
    age_s: float | None = None
    """Seconds since the room was claimed."""
    time_to_dispatch_ms: int | None = None
    """From enqueue to LiveKit accepting CreateDispatch."""
    end_reason: str | None = None
    last_error: str | None = None
    report_source: str | None = None
    replaces: str | None = None
    """The session this one replaced: its agent died with people in the room (failover)."""
    replaced_by: str | None = None
    """The session that replaced this one."""
    restart: int | None = None
    """Which replacement of its event's first session this is (1: the first replacement)."""
    restarts: str | None = None
    """When its chain's sessions were replaced (unix ms, comma-separated)."""
    chain: list[str] | None = None
    """Its event's sessions, first to last, when agents were replaced (failover)."""
    job_type: str | None = None
    """"publisher" when its agents take a job per publisher (AGENT_JOB_TYPE=publisher)."""
    part_of: str | None = None
    """On one publisher's job: the event's session it is a part of."""
    publisher: str | None = None
    """On one publisher's job: the participant it is for."""


class SessionPage(_Answer):
    sessions: list[SessionView]


class ResultView(_Answer):
    entry_id: str
    """The results stream entry id."""
    report: SessionReport


class ResultPage(_Answer):
    results: list[ResultView]


class DeadLetterView(_Answer):
    entry_id: str
    kind: str
    """failed_dispatch (replayable), invalid_event, invalid_report or malformed_job."""
    reason: str
    job_id: str
    event_id: str
    session_id: str
    generation: int
    at_ms: int
    replayable: bool
    replayed_as: str | None = None
    payload: str | None = None
    """The event or raw job as received; only with include_payload=true (it may carry
    personal data)."""


class DeadLetterPage(_Answer):
    dead_letters: list[DeadLetterView]


class ReplayAccepted(_Answer):
    entry_id: str
    job_id: str


class DispatchPoint(_Answer):
    at_ms: int
    ms: int
    room: str


class LineView(_Answer):
    """An agent name's waiting line: what its fleet takes, how much of it is in use, and how
    many sessions wait for a slot."""

    agent_name: str
    capacity: int | None
    """Slots its agent workers offer now (or its static limit); null: not known, no line."""
    in_use: int
    waiting: int


class Overview(_Answer):
    """Everything the dashboard shows, in one answer."""

    now_ms: int
    queue_depth: int
    live_count: int
    lines: list[LineView]
    live_sessions: list[SessionView]
    time_to_dispatch: list[DispatchPoint]
    reports: list[ResultView]
    dead_letters: list[DeadLetterView]
    worker_ok: bool


class Check(_Answer):
    ok: bool
    detail: str


class Health(_Answer):
    status: Literal["ok", "failing"]
    failing: list[str]
    checks: dict[str, Check]


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("must carry a timezone (2026-11-21T14:00:00Z) or be unix seconds/ms")
    return value


class SessionQuery(_Query):
    status: SessionStatus | None = None
    agent_name: str | None = None
    since: datetime | None = None
    """Sessions created at or after this time (ISO 8601 with zone, or unix seconds/ms)."""
    until: datetime | None = None
    limit: int = Field(50, ge=1, le=500)

    @field_validator("since", "until")
    @classmethod
    def _tz(cls, value: datetime | None) -> datetime | None:
        return _aware(value)


class CountQuery(_Query):
    count: int = Field(50, ge=1, le=500)


class DeadLetterQuery(_Query):
    count: int = Field(50, ge=1, le=500)
    include_payload: bool = False


class OverviewQuery(_Query):
    window_s: int = Field(900, ge=60, le=24 * 3600)
    """How far back the time-to-dispatch series goes."""
    reports: int = Field(20, ge=1, le=200)
    dead_letters: int = Field(20, ge=1, le=200)


def session_view(session: Session, place: dict[str, Any] | None = None) -> SessionView:
    """The record, with a waiting session's `place` in its line (store.line.place)."""
    return SessionView.model_validate({**session.view(int(time.time() * 1000)), **(place or {})})


def session_answer(session: Session, place: dict[str, Any] | None = None) -> dict[str, Any]:
    """A session record as the API answers it (checked against SessionView)."""
    return session_view(session, place).model_dump(mode="json", exclude_none=True)
