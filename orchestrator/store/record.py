"""A session's record: its statuses, and the sets that every part reads them from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from tasks.connection import text


class SessionStatus(StrEnum):
    """(waiting →) claimed → dispatched → assigned → (ending) → completed | failed | lost."""

    WAITING = "waiting"
    """The room is held for the session; it waits in its agent name's line for a free slot."""
    CLAIMED = "claimed"
    """The room is held for the session; its dispatch is being made."""
    DISPATCHED = "dispatched"
    """LiveKit has the dispatch; no worker runs it yet."""
    ASSIGNED = "assigned"
    """An agent worker runs the session's job."""
    ENDING = "ending"
    """An end was asked for; the agent's report is awaited."""
    COMPLETED = "completed"
    FAILED = "failed"
    LOST = "lost"


LIVE = frozenset({SessionStatus.WAITING, SessionStatus.CLAIMED, SessionStatus.DISPATCHED,
                  SessionStatus.ASSIGNED, SessionStatus.ENDING})  # fmt: skip
"""A live session holds its room's claim."""
TERMINAL = frozenset({SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.LOST})
"""A terminal session has its one report on the results stream."""


@dataclass(frozen=True, slots=True)
class Session:
    """A session's record, parsed once from its Redis hash (`keys.session_key`). Times are unix
    milliseconds; a field the record does not have yet is None."""

    session_id: str
    status: SessionStatus
    event_id: str = ""
    room: str = ""
    agent_name: str = ""
    generation: int = 0
    attempts: int = 0
    """Dispatches made for the session so far (the assignment check dispatches again)."""
    dispatch_job: str | None = None
    """The arq job that claimed the room and dispatches the session."""
    dispatch_id: str | None = None
    """LiveKit's id of the session's current dispatch."""
    confirm_job: str | None = None
    """The arq job of the current dispatch's assignment check."""
    job_id: str | None = None
    """The LiveKit job an agent runs the session in."""
    worker_id: str | None = None
    restart_policy: str | None = None
    """The event's restart policy when not LiveKit's default ("never")."""
    priority: int = 0
    line_score: int | None = None
    """Its place in its agent name's waiting line (lower first); set when the agent name's
    capacity was known at its claim, so that it waits for a slot or holds one."""
    expires_at: int | None = None
    """The event's `expires_at`: not dispatched after this."""
    enqueued_at: int | None = None
    claimed_at: int | None = None
    admitted_at: int | None = None
    """When a slot freed for it and it left the line."""
    dispatched_at: int | None = None
    assigned_at: int | None = None
    end_requested_at: int | None = None
    gone_since: int | None = None
    """When LiveKit was seen to lose the agent (a webhook, or its dispatch gone)."""
    ended_at: int | None = None
    end_reason: str | None = None
    last_error: str | None = None
    report_source: str | None = None
    replaces: str | None = None
    """The session this one replaced: its agent died with people in the room (failover)."""
    replaced_by: str | None = None
    """The session that replaced this one."""
    restart: int = 0
    """Which replacement of its event's first session this is (0: the first session)."""
    restarts: str | None = None
    """When the sessions of its chain were replaced (unix ms, comma-separated), for the
    restart budget (LKD_MAX_RESTARTS within LKD_RESTART_WINDOW_S)."""
    job_type: str | None = None
    """"publisher" when its agents take a job per publisher (AGENT_JOB_TYPE=publisher): on
    the event's session, which ends with its room, and on each of its parts."""
    part_of: str | None = None
    """On a part (one publisher's job): the event's session it belongs to."""
    publisher: str | None = None
    """On a part: the identity of the participant its job is for."""

    def restart_times(self) -> list[int]:
        return [int(t) for t in (self.restarts or "").split(",") if t.isdigit()]

    @property
    def live(self) -> bool:
        return self.status in LIVE

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def parse(cls, raw: Mapping[Any, Any]) -> Session | None:
        """The record from HGETALL's answer (bytes or str); None when there is none, or when
        it is not a session's (no id or no known status)."""
        fields = {text(k): text(v) for k, v in raw.items()}
        try:
            status = SessionStatus(fields.get("status", ""))
        except ValueError:
            return None
        if not fields.get("session_id"):
            return None
        values: dict[str, Any] = {"status": status}
        for name, kind in _KINDS.items():
            value = fields.get(name)
            if name == "status" or not value:  # absent or empty: the field's default
                continue
            if kind is str:
                values[name] = value
            elif value.lstrip("-").isdigit():
                values[name] = int(value)
        return cls(**values)

    def view(self, now_ms: int) -> dict[str, Any]:
        """The record as JSON-able fields (those it has), with its age and time to dispatch."""
        view: dict[str, Any] = {
            name: getattr(self, name) for name in _KINDS if getattr(self, name) not in (None, "")
        }
        if not self.restart:
            del view["restart"]
        view["status"] = str(self.status)
        if self.claimed_at:
            view["age_s"] = round((now_ms - self.claimed_at) / 1000, 3)
        if self.enqueued_at and self.dispatched_at:
            view["time_to_dispatch_ms"] = self.dispatched_at - self.enqueued_at
        return view


_KINDS: dict[str, type] = {
    f.name: int if str(f.type).startswith("int") else str for f in fields(Session)
}
"""Each field of the record, and how its value in the hash reads (int or str)."""
