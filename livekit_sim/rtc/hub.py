"""The media side of every room: who is connected, which tracks exist, who receives what.

`RtcHub` listens to the room model (`RoomRegistry`) and keeps, per room, the endpoints that
stand for its participants (an SDK client on `/rtc`, or a simulated participant), the published
tracks and their subscribers. It promises, like livekit-server:
- every participant change reaches every other connected client as a ParticipantUpdate (and
  the participant's own client, for changes after its join), before any media that needs it;
- a published track is offered to every client that auto-subscribes, and the publisher hears
  `track_subscribed` once a subscriber's answer is in;
- data packets are stamped with their sender and delivered to their destinations only;
- a participant leaving takes its tracks with it; a participant removed by the server (room
  closed, RemoveParticipant) is told why and disconnected.
It also keeps, per room name and beyond the room's life, what tests inspect: every data packet
routed, every text message, and the audio each SDK participant published.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaRelay
from livekit.protocol import models

from livekit_sim.rooms import RoomRegistry, SimRoom
from livekit_sim.rtc.data import Sender, TextMessage, TextStreams, addressed_to, stamp
from livekit_sim.rtc.media import AudioCapture

log = logging.getLogger(__name__)

MAX_LOGGED_PACKETS = 10_000


class Endpoint(Protocol):
    """A participant as the media side sees it."""

    identity: str
    auto_subscribe: bool

    def send_updates(self, infos: list[models.ParticipantInfo]) -> None: ...
    def deliver(self, dp: models.DataPacket) -> None: ...
    def subscribe(self, pub: Publication) -> None: ...
    def unsubscribe(self, pub: Publication) -> None: ...
    def subscription_ready(self, track_sid: str) -> None: ...
    def disconnect(self, reason: models.DisconnectReason) -> None: ...


@dataclass(eq=False)
class Publication:
    """One published track and the relay that fans it out to subscribers."""

    info: models.TrackInfo
    publisher_identity: str
    publisher_sid: str
    source: MediaStreamTrack
    relay: MediaRelay = field(default_factory=MediaRelay)
    subscribers: set[str] = field(default_factory=set)
    receiving: set[str] = field(default_factory=set)
    """Subscribers whose answer for this track is in: its media flows to them."""

    @property
    def stream_id(self) -> str:
        """The msid the SDK maps media with: "<participant sid>|<track sid>"."""
        return f"{self.publisher_sid}|{self.info.sid}"

    def reader(self) -> MediaStreamTrack:
        """A new consumer of the track's frames."""
        return self.relay.subscribe(self.source, buffered=True)


@dataclass
class DataRecord:
    """One data packet as routed: stamped, with the identities it was delivered to."""

    packet: models.DataPacket
    delivered_to: list[str]


@dataclass
class RoomLog:
    """What happened in rooms of one name, kept after they close."""

    packets: deque[DataRecord] = field(default_factory=lambda: deque(maxlen=MAX_LOGGED_PACKETS))
    texts: list[TextMessage] = field(default_factory=list)
    captures: list[AudioCapture] = field(default_factory=list)
    streams: TextStreams = field(default_factory=TextStreams)


@dataclass
class MediaRoom:
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    publications: dict[str, Publication] = field(default_factory=dict)


class RtcHub:
    """Media and data for every room of one sim (a `RoomListener` of its registry)."""

    def __init__(self, registry: RoomRegistry, *, max_capture_s: float = 600.0) -> None:
        self.registry = registry
        self.rooms: dict[str, MediaRoom] = {}
        self.logs: dict[str, RoomLog] = {}
        self._max_capture_s = max_capture_s
        registry.listeners.append(self)

    def log_of(self, room_name: str) -> RoomLog:
        return self.logs.setdefault(room_name, RoomLog())

    # -- endpoints -------------------------------------------------------------------------

    def attach(self, room_name: str, endpoint: Endpoint) -> None:
        """`endpoint` now stands for its (already joined) participant; it is offered every
        existing track if it auto-subscribes."""
        media = self.rooms.setdefault(room_name, MediaRoom())
        media.endpoints[endpoint.identity] = endpoint
        if endpoint.auto_subscribe:
            for pub in media.publications.values():
                if pub.publisher_identity != endpoint.identity:
                    self._subscribe(endpoint, pub)

    def detach(self, room_name: str, endpoint: Endpoint) -> None:
        """`endpoint` is going away on its own: no more updates, and no disconnect, for it."""
        media = self.rooms.get(room_name)
        if media is not None and media.endpoints.get(endpoint.identity) is endpoint:
            del media.endpoints[endpoint.identity]

    def endpoint(self, room_name: str, identity: str) -> Endpoint | None:
        media = self.rooms.get(room_name)
        return media.endpoints.get(identity) if media else None

    def publications(self, room_name: str, identity: str | None = None) -> list[Publication]:
        """The live tracks of a room (of one participant if `identity` is given)."""
        media = self.rooms.get(room_name)
        pubs = list(media.publications.values()) if media else []
        return [p for p in pubs if identity is None or p.publisher_identity == identity]

    # -- tracks ----------------------------------------------------------------------------

    def publish(
        self, room_name: str, identity: str, track: models.TrackInfo, source: MediaStreamTrack
    ) -> Publication:
        """Add a track to the participant: ParticipantUpdate first, then auto-subscriptions.
        Audio from SDK participants is captured too. KeyError if the participant is gone."""
        sim_room = self.registry.rooms[room_name]
        info = sim_room.participants[identity]
        pub = Publication(track, identity, info.sid, source)
        media = self.rooms.setdefault(room_name, MediaRoom())
        media.publications[track.sid] = pub
        info.tracks.append(track)
        self.registry.track_published(sim_room, info)
        for endpoint in list(media.endpoints.values()):
            if endpoint.identity != identity and endpoint.auto_subscribe:
                self._subscribe(endpoint, pub)
        return pub

    def capture(self, room_name: str, pub: Publication) -> AudioCapture:
        """Record `pub`'s audio into the room's log."""
        capture = AudioCapture(pub.publisher_identity, pub.info.sid, max_s=self._max_capture_s)
        capture.start(pub.reader())
        self.log_of(room_name).captures.append(capture)
        return capture

    def set_subscribed(self, room_name: str, identity: str, track_sid: str, on: bool) -> None:
        """An explicit (un)subscription request from a client."""
        media = self.rooms.get(room_name)
        endpoint = media.endpoints.get(identity) if media else None
        pub = media.publications.get(track_sid) if media else None
        if endpoint is None or pub is None or pub.publisher_identity == identity:
            return
        if on and identity not in pub.subscribers:
            self._subscribe(endpoint, pub)
        elif not on and identity in pub.subscribers:
            pub.subscribers.discard(identity)
            pub.receiving.discard(identity)
            endpoint.unsubscribe(pub)

    def subscription_ready(self, room_name: str, pub: Publication, subscriber: str) -> None:
        """A subscriber's answer for `pub` is in: tell the publisher (`track_subscribed`)."""
        if subscriber in pub.subscribers:
            pub.receiving.add(subscriber)
        publisher = self.endpoint(room_name, pub.publisher_identity)
        if publisher is not None:
            publisher.subscription_ready(pub.info.sid)

    def _subscribe(self, endpoint: Endpoint, pub: Publication) -> None:
        pub.subscribers.add(endpoint.identity)
        endpoint.subscribe(pub)

    def _unpublish_all(self, media: MediaRoom, identity: str) -> None:
        for sid, pub in list(media.publications.items()):
            if pub.publisher_identity != identity:
                continue
            del media.publications[sid]
            for subscriber in pub.subscribers:
                endpoint = media.endpoints.get(subscriber)
                if endpoint is not None:
                    endpoint.unsubscribe(pub)
            pub.source.stop()

    # -- data ------------------------------------------------------------------------------

    def route(
        self,
        room_name: str,
        sender: Sender,
        kind: models.DataPacket.Kind,
        dp: models.DataPacket,
    ) -> list[str]:
        """Stamp `dp` as sent by `sender` and deliver it; the identities it reached."""
        if not stamp(dp, kind, sender):
            return []
        media = self.rooms.get(room_name)
        sim_room = self.registry.rooms.get(room_name)
        delivered: list[str] = []
        if media is not None and sim_room is not None:
            for identity, endpoint in list(media.endpoints.items()):
                info = sim_room.participants.get(identity)
                if identity == sender.identity or info is None:
                    continue
                if addressed_to(dp, identity, info.sid):
                    endpoint.deliver(dp)
                    delivered.append(identity)
        room_log = self.log_of(room_name)
        room_log.packets.append(DataRecord(dp, delivered))
        message = room_log.streams.feed(dp)
        if message is not None:
            room_log.texts.append(message)
        return delivered

    # -- RoomListener ----------------------------------------------------------------------

    def participant_joined(self, room: SimRoom, info: models.ParticipantInfo) -> None:
        self._broadcast(room.name, info, skip=info.identity)

    def participant_updated(self, room: SimRoom, info: models.ParticipantInfo) -> None:
        self._broadcast(room.name, info, skip=None)

    def participant_left(self, room: SimRoom, info: models.ParticipantInfo) -> None:
        media = self.rooms.get(room.name)
        if media is None:
            return
        self._unpublish_all(media, info.identity)
        for pub in media.publications.values():
            pub.subscribers.discard(info.identity)
            pub.receiving.discard(info.identity)
        endpoint = media.endpoints.pop(info.identity, None)
        if endpoint is not None:
            removed = models.DisconnectReason.PARTICIPANT_REMOVED
            endpoint.disconnect(room.close_reason if room.closed else removed)
        self._broadcast(room.name, info, skip=info.identity)

    def room_closed(self, room: SimRoom) -> None:
        self.rooms.pop(room.name, None)

    async def aclose(self) -> None:
        """Stop every track and every capture."""
        for media in self.rooms.values():
            for pub in media.publications.values():
                pub.source.stop()
        self.rooms.clear()
        for room_log in self.logs.values():
            for capture in room_log.captures:
                await capture.aclose()

    def _broadcast(self, room_name: str, info: models.ParticipantInfo, skip: str | None) -> None:
        media = self.rooms.get(room_name)
        if media is None or info.permission.hidden:
            return
        snapshot = models.ParticipantInfo()
        snapshot.CopyFrom(info)
        for identity, endpoint in list(media.endpoints.items()):
            if identity != skip:
                endpoint.send_updates([snapshot])
