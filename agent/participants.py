"""Who was in the room during a session: identities, kinds, join and leave times, and (once
a handler asks for it with `measure_speaking`) how long each spoke.

`ParticipantTracker.attach(ctx)` registers a participant entrypoint (run by livekit-agents for
every participant present at connect time or joining later) and a leave listener. Handlers
read it to wait for people; the report takes its `records()`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from livekit import rtc
from livekit.agents import JobContext

from agent.speaking import SpeakingMeter
from tasks.models import ParticipantRecord

ALL_KINDS: list[rtc.ParticipantKind.ValueType] = [
    rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
    rtc.ParticipantKind.PARTICIPANT_KIND_INGRESS,
    rtc.ParticipantKind.PARTICIPANT_KIND_EGRESS,
    rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
    rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
    rtc.ParticipantKind.PARTICIPANT_KIND_CONNECTOR,
    rtc.ParticipantKind.PARTICIPANT_KIND_BRIDGE,
]
HUMAN_KINDS = frozenset({"standard", "sip", "connector"})
"""Kinds that stand for a person: a browser or app, a phone call, a messaging bridge."""


def kind_name(kind: rtc.ParticipantKind.ValueType) -> str:
    """'standard', 'sip', 'agent', ... from the protobuf enum value."""
    try:
        return rtc.ParticipantKind.Name(kind).removeprefix("PARTICIPANT_KIND_").lower()
    except ValueError:
        return f"unknown-{int(kind)}"


@dataclass
class _Stay:
    identity: str
    sid: str
    kind: str
    joined_at: datetime
    left_at: datetime | None = None


class ParticipantTracker:
    """Every stay of every remote participant; a rejoin is a new stay."""

    def __init__(self) -> None:
        self._stays: list[_Stay] = []
        self._present: dict[str, _Stay] = {}
        self._changed = asyncio.Event()
        self._speaking: SpeakingMeter | None = None

    def attach(self, ctx: JobContext) -> None:
        ctx.add_participant_entrypoint(self._on_participant, kind=ALL_KINDS)
        ctx.room.on("participant_disconnected", self._on_left)

    def measure_speaking(self, room: rtc.Room, meter: SpeakingMeter | None = None) -> None:
        """Measure how long each participant speaks in the audio `room` receives (call it
        before connecting); `records()` then carry `speaking_time_s`."""
        if self._speaking is None:
            self._speaking = meter or SpeakingMeter()
            self._speaking.attach(room)

    async def _on_participant(self, ctx: JobContext, participant: rtc.RemoteParticipant) -> None:
        now = datetime.now(UTC)
        if participant.identity in self._present:
            return
        stay = _Stay(
            participant.identity, participant.sid, kind_name(participant.kind), joined_at=now
        )
        self._stays.append(stay)
        if participant.identity in ctx.room.remote_participants:
            self._present[participant.identity] = stay
        else:  # left before this entrypoint ran
            stay.left_at = now
        self._notify()

    def _on_left(self, participant: rtc.RemoteParticipant) -> None:
        stay = self._present.pop(participant.identity, None)
        if stay is not None:
            stay.left_at = datetime.now(UTC)
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def humans_present(self) -> list[str]:
        return [s.identity for s in self._present.values() if s.kind in HUMAN_KINDS]

    @property
    def humans_seen(self) -> int:
        return len({s.identity for s in self._stays if s.kind in HUMAN_KINDS})

    async def wait_for_human(self, timeout_s: float) -> bool:
        """True once a person is in the room; False if none came within `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                while not self.humans_present:
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def wait_until_no_humans(self) -> None:
        """Return once every person has left."""
        while self.humans_present:
            await self._changed.wait()

    def records(self) -> list[ParticipantRecord]:
        """Stays in join order; `left_at` is empty for those still in the room;
        `speaking_time_s` is empty unless speaking is measured and the stay had audio."""
        speaking = self._speaking
        return [
            ParticipantRecord(
                identity=s.identity,
                kind=s.kind,
                joined_at=s.joined_at,
                left_at=s.left_at,
                speaking_time_s=speaking.speaking_time_s(s.sid) if speaking else None,
            )
            for s in self._stays
        ]
