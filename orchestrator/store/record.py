"""A session's record: its statuses, and the sets that every part reads them from."""

from __future__ import annotations

from enum import StrEnum


class SessionStatus(StrEnum):
    """claimed → dispatched → assigned → (ending) → completed | failed | lost."""

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


LIVE = frozenset({SessionStatus.CLAIMED, SessionStatus.DISPATCHED, SessionStatus.ASSIGNED,
                  SessionStatus.ENDING})  # fmt: skip
"""A live session holds its room's claim."""
TERMINAL = frozenset({SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.LOST})
"""A terminal session has its one report on the results stream."""
