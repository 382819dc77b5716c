"""Simulated participants: people in a room driven by a test or the control API, not by an SDK.

A `SimulatedParticipant` can publish a microphone (`SpeechSource`) and say clips into it, send
data packets and text messages as a client would, and keeps everything the room delivered to
it (data packets, reassembled text messages) for tests to read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from livekit.protocol import models

from livekit_sim import ids
from livekit_sim.rtc.data import (
    LOSSY,
    RELIABLE,
    Sender,
    TextMessage,
    TextStreams,
    text_stream_packets,
)
from livekit_sim.rtc.hub import Publication, RtcHub
from livekit_sim.rtc.media import Samples, SpeechSource


@dataclass
class ReceivedData:
    """A user data packet as a participant receives it."""

    sender: str
    topic: str
    payload: bytes
    reliable: bool


class SimulatedParticipant:
    """A participant of `room_name` that the sim itself plays (an endpoint of the hub)."""

    auto_subscribe = False  # it hears nothing; what SDK participants publish is captured

    def __init__(self, hub: RtcHub, room_name: str, info: models.ParticipantInfo) -> None:
        self.hub = hub
        self.room_name = room_name
        self.identity = info.identity
        self.sid = info.sid
        self.is_agent = info.kind == models.ParticipantInfo.Kind.AGENT
        self.packets: list[models.DataPacket] = []
        self.data: list[ReceivedData] = []
        self.texts: list[TextMessage] = []
        self.connected = True
        self.microphone: SpeechSource | None = None
        self._streams = TextStreams()
        self._sequence = 0

    # -- acting ----------------------------------------------------------------------------

    def publish_microphone(self, name: str = "microphone") -> Publication:
        """Publish an audio track (silent until `say`); at most one per participant."""
        if self.microphone is not None:
            raise ValueError(f"{self.identity!r} already publishes a microphone")
        self.microphone = SpeechSource()
        track = models.TrackInfo(
            sid=ids.new_id(ids.TRACK),
            type=models.TrackType.AUDIO,
            name=name,
            source=models.TrackSource.MICROPHONE,
            mime_type="audio/opus",
            stream="camera",  # livekit's default stream name for mic and camera
        )
        return self.hub.publish(self.room_name, self.identity, track, self.microphone)

    def say(self, samples: Samples) -> float:
        """Speak `samples` (48 kHz mono) from now, publishing the microphone if needed.
        Returns the number of seconds until the speech ends."""
        if self.microphone is None:
            self.publish_microphone()
        assert self.microphone is not None
        return max(0.0, self.microphone.say(samples) - time.monotonic())

    def send_data(
        self,
        payload: bytes,
        *,
        topic: str = "",
        destination_identities: list[str] | None = None,
        reliable: bool = True,
    ) -> list[str]:
        """Publish a user data packet; the identities it reached."""
        dp = models.DataPacket(
            user=models.UserPacket(payload=payload, topic=topic),
            destination_identities=list(destination_identities or []),
        )
        return self._send(dp, RELIABLE if reliable else LOSSY)

    def send_text(
        self, text: str, *, topic: str = "", destination_identities: list[str] | None = None
    ) -> list[str]:
        """Send a text stream (header, chunks, trailer); the identities it reached."""
        reached: list[str] = []
        for dp in text_stream_packets(
            text, topic=topic, destination_identities=destination_identities
        ):
            reached = self._send(dp, RELIABLE)
        return reached

    def _send(self, dp: models.DataPacket, kind: models.DataPacket.Kind) -> list[str]:
        if not self.connected:
            raise RuntimeError(f"{self.identity!r} has left room {self.room_name!r}")
        if kind == RELIABLE:
            self._sequence += 1
            dp.sequence = self._sequence
        sender = Sender(self.identity, self.sid, is_agent=self.is_agent)
        return self.hub.route(self.room_name, sender, kind, dp)

    # -- Endpoint --------------------------------------------------------------------------

    def send_updates(self, infos: list[models.ParticipantInfo]) -> None:
        pass

    def deliver(self, dp: models.DataPacket) -> None:
        self.packets.append(dp)
        if dp.WhichOneof("value") == "user":
            self.data.append(
                ReceivedData(
                    sender=dp.participant_identity,
                    topic=dp.user.topic,
                    payload=dp.user.payload,
                    reliable=dp.kind == RELIABLE,
                )
            )
        message = self._streams.feed(dp)
        if message is not None:
            self.texts.append(message)

    def subscribe(self, pub: Publication) -> None:
        pass

    def unsubscribe(self, pub: Publication) -> None:
        pass

    def subscription_ready(self, track_sid: str) -> None:
        pass

    def disconnect(self, reason: models.DisconnectReason) -> None:
        self.connected = False
