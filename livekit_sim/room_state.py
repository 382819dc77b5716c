"""The state of one live room and the vocabulary around it: participant kinds, the errors of
the room model, and the listener interface through which the media side follows changes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from livekit.protocol import agent_dispatch, models

# Callback the webhook notifier provides: (event name, room, participant or None).
EventSink = Callable[[str, models.Room, models.ParticipantInfo | None], None]

PARTICIPANT_KINDS: Mapping[str, models.ParticipantInfo.Kind] = {
    "standard": models.ParticipantInfo.Kind.STANDARD,
    "ingress": models.ParticipantInfo.Kind.INGRESS,
    "egress": models.ParticipantInfo.Kind.EGRESS,
    "sip": models.ParticipantInfo.Kind.SIP,
    "agent": models.ParticipantInfo.Kind.AGENT,
    "connector": models.ParticipantInfo.Kind.CONNECTOR,
}
_DEPENDENT_KINDS = {models.ParticipantInfo.Kind.AGENT, models.ParticipantInfo.Kind.EGRESS}


class RoomListener(Protocol):
    """Told of every participant change, after the room model applied it."""

    def participant_joined(self, room: SimRoom, info: models.ParticipantInfo) -> None: ...
    def participant_updated(self, room: SimRoom, info: models.ParticipantInfo) -> None: ...
    def participant_left(self, room: SimRoom, info: models.ParticipantInfo) -> None: ...
    def room_closed(self, room: SimRoom) -> None: ...


class RoomFullError(Exception):
    """The room already holds max_participants participants."""


class ParticipantNotFoundError(Exception):
    """No participant with that identity in that room."""


def is_dependent(participant: models.ParticipantInfo) -> bool:
    """Agents and egress neither trigger jobs nor keep a room open (participant.go IsDependent)."""
    return participant.kind in _DEPENDENT_KINDS


@dataclass
class SimRoom:
    """One live room. `proto` is what the Twirp API returns for it."""

    proto: models.Room
    empty_timeout_s: float
    departure_timeout_s: float
    created_at_s: float
    dispatches: dict[str, agent_dispatch.AgentDispatch] = field(default_factory=dict)
    participants: dict[str, models.ParticipantInfo] = field(default_factory=dict)
    first_joined_at_s: float | None = None
    last_left_at_s: float | None = None
    closed: bool = False
    close_reason: models.DisconnectReason = models.DisconnectReason.UNKNOWN_REASON
    # Jobs assigned for this room, terminated when it closes.
    job_ids: list[str] = field(default_factory=list)
    # Agent participant identity -> its job, terminated when that participant leaves.
    agent_jobs: dict[str, str] = field(default_factory=dict)
    # In-flight job requests per dispatch id; DeleteDispatch waits for them like the real one.
    pending: dict[str, set[asyncio.Task[None]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.proto.name

    def snapshot(self) -> models.Room:
        """A copy of the room proto with the current participant count."""
        out = models.Room()
        out.CopyFrom(self.proto)
        out.num_participants = len(self.participants)
        return out

    def idle_for(self, now_s: float) -> bool:
        """Whether the room has outlived its empty or departure timeout (Room.CloseIfEmpty)."""
        if any(not is_dependent(p) for p in self.participants.values()):
            return False
        if self.first_joined_at_s is not None and self.last_left_at_s is not None:
            return now_s - self.last_left_at_s >= self.departure_timeout_s
        return now_s - self.created_at_s >= self.empty_timeout_s
