"""One real SDK participant connected on `/rtc` (v0, dual peer connection), as livekit-server
serves it: the signalling conversation after the join, its two peer connections, and its place
in the room as an endpoint of the hub.

Replies the SDK waits for are sent promptly: `answer` to every publisher offer,
`track_published` to every `add_track` (within the SDK's 10 s), `request_response` to every
metadata update (within its 5 s), `pong_resp` to every ping. Messages to the client leave in
the order they were queued, so a ParticipantUpdate always precedes the offer carrying the
media it announces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import MediaStreamTrack, RTCDataChannel, RTCRtpTransceiver
from livekit.protocol import models, rtc

from livekit_sim import ids
from livekit_sim.rooms import RoomRegistry
from livekit_sim.rtc.data import LOSSY, RELIABLE, Sender
from livekit_sim.rtc.hub import Publication, RtcHub
from livekit_sim.rtc.peers import LOSSY_LABEL, RELIABLE_LABEL, PublisherPeer, SubscriberPeer

log = logging.getLogger(__name__)

MAX_QUEUED_PACKETS = 1000  # per closed data channel, until it opens


class SdkParticipant:
    """The server side of one SDK client's session (an endpoint of the hub)."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        *,
        hub: RtcHub,
        room_name: str,
        info: models.ParticipantInfo,
        auto_subscribe: bool,
    ) -> None:
        self.ws = ws
        self.hub = hub
        self.registry: RoomRegistry = hub.registry
        self.room_name = room_name
        self.identity = info.identity
        self.sid = info.sid
        self.permission = models.ParticipantPermission()
        self.permission.CopyFrom(info.permission)
        self.sender = Sender(
            info.identity,
            info.sid,
            is_agent=info.kind == models.ParticipantInfo.Kind.AGENT,
            hidden=info.permission.hidden,
        )
        self.auto_subscribe = auto_subscribe and info.permission.can_subscribe
        self.publisher = PublisherPeer(
            on_connected=self._connected,
            on_track=self._on_track,
            on_data_channel=self._on_data_channel,
        )
        self.subscriber: SubscriberPeer | None = None
        if info.permission.can_subscribe:
            self.subscriber = SubscriberPeer(
                send_offer=self._send_offer, on_connected=self._connected
            )
        self._outbox: asyncio.Queue[rtc.SignalResponse | None] = asyncio.Queue()
        self._pending_tracks: dict[str, models.TrackInfo] = {}
        self._sending: dict[str, tuple[RTCRtpTransceiver, MediaStreamTrack]] = {}
        self._queued_packets: dict[str, list[bytes]] = {RELIABLE_LABEL: [], LOSSY_LABEL: []}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._media_connected = False
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    # -- session ---------------------------------------------------------------------------

    async def run(self, join: rtc.JoinResponse) -> None:
        """Serve the session until the client leaves or the server disconnects it."""
        self._writer = writer = asyncio.create_task(self._write())
        self.send(rtc.SignalResponse(join=join))
        if self.subscriber is not None:
            for label in (RELIABLE_LABEL, LOSSY_LABEL):
                channel = (
                    self.subscriber.reliable if label == RELIABLE_LABEL else self.subscriber.lossy
                )
                channel.on("open", lambda label=label: self._flush_channel(label))
            self._spawn(self._negotiate())
        why = "the signalling connection closed"
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.BINARY:
                    continue
                await self._handle(rtc.SignalRequest.FromString(msg.data))
                if self._closing:
                    why = "it left" if self._closer is None else "the server disconnected it"
                    break
        except Exception:
            why = "its signalling failed"
            log.exception("signal session of %s failed", self.identity)
        finally:
            # Gone without a leave after its media connected (killed): a ghost for a while.
            vanished = why == "the signalling connection closed" and self._media_connected
            log.info("participant %s leaves room %s: %s", self.identity, self.room_name, why)
            self._closing = True
            self._outbox.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, 2.0)
            await self._cleanup(vanished)

    def send(self, msg: rtc.SignalResponse) -> None:
        if not self._closing:
            self._outbox.put_nowait(msg)

    async def _write(self) -> None:
        while (msg := await self._outbox.get()) is not None:
            if self.ws.closed:
                return
            await self.ws.send_bytes(msg.SerializeToString())

    async def _cleanup(self, vanished: bool) -> None:
        self.hub.detach(self.room_name, self)
        sim_room = self.registry.rooms.get(self.room_name)
        current = sim_room.participants.get(self.identity) if sim_room else None
        if current is not None and current.sid == self.sid:
            if vanished and self.registry.peer_connection_timeout_s > 0:
                self.registry.vanish(self.room_name, self.identity, self.sid)
            else:
                self.registry.leave(self.room_name, self.identity)
        for task in list(self._tasks):
            task.cancel()
        for _, reader in self._sending.values():
            reader.stop()
        await self.publisher.close()
        if self.subscriber is not None:
            await self.subscriber.close()
        if not self.ws.closed:
            await self.ws.close()

    def _connected(self) -> None:
        self._media_connected = True
        self.registry.activate(self.room_name, self.identity)

    # -- requests --------------------------------------------------------------------------

    async def _handle(self, req: rtc.SignalRequest) -> None:
        which = req.WhichOneof("message")
        if which == "offer":
            sdp = await self.publisher.answer(req.offer.sdp)
            answer = rtc.SessionDescription(type="answer", sdp=sdp, id=req.offer.id)
            self.send(rtc.SignalResponse(answer=answer))
        elif which == "answer":
            if self.subscriber is not None:
                self.subscriber.on_answer(req.answer.sdp)
        elif which == "trickle":
            peer = (
                self.publisher
                if req.trickle.target == rtc.SignalTarget.PUBLISHER
                else self.subscriber
            )
            if peer is not None:
                await peer.add_candidate(req.trickle.candidateInit)
        elif which == "add_track":
            self._add_track(req.add_track)
        elif which == "mute":
            self._mute(req.mute)
        elif which == "subscription":
            for sid in req.subscription.track_sids:
                self.hub.set_subscribed(
                    self.room_name, self.identity, sid, req.subscription.subscribe
                )
        elif which == "update_metadata":
            self._update_metadata(req.update_metadata)
        elif which == "ping_req":
            pong = rtc.Pong(last_ping_timestamp=req.ping_req.timestamp, timestamp=_now_ms())
            self.send(rtc.SignalResponse(pong_resp=pong))
        elif which == "ping":
            self.send(rtc.SignalResponse(pong=_now_ms()))
        elif which == "leave":
            self._closing = True
        else:
            log.debug("ignoring signal request %s from %s", which, self.identity)

    def _add_track(self, req: rtc.AddTrackRequest) -> None:
        if not self.permission.can_publish:
            log.info("%s may not publish; add_track ignored", self.identity)
            return
        track = models.TrackInfo(
            sid=ids.new_id(ids.TRACK),
            type=req.type,
            name=req.name,
            muted=req.muted,
            source=req.source,
            disable_dtx=req.disable_dtx,
            stereo=req.stereo,
            stream=req.stream,
        )
        self._pending_tracks[req.cid] = track
        self.send(
            rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=req.cid, track=track))
        )

    def _mute(self, req: rtc.MuteTrackRequest) -> None:
        sim_room = self.registry.rooms.get(self.room_name)
        info = sim_room.participants.get(self.identity) if sim_room else None
        if sim_room is None or info is None:
            return
        for track in info.tracks:
            if track.sid == req.sid and track.muted != req.muted:
                track.muted = req.muted
                self.registry.updated(sim_room, info)

    def _update_metadata(self, req: rtc.UpdateParticipantMetadata) -> None:
        response = rtc.RequestResponse(request_id=req.request_id, update_metadata=req)
        sim_room = self.registry.rooms.get(self.room_name)
        info = sim_room.participants.get(self.identity) if sim_room else None
        if not self.permission.can_update_metadata:
            response.reason = rtc.RequestResponse.Reason.NOT_ALLOWED
            response.message = "does not have permission to update own metadata"
        elif sim_room is not None and info is not None:
            if req.name:
                info.name = req.name
            if req.metadata:
                info.metadata = req.metadata
            for key, value in req.attributes.items():
                if value:
                    info.attributes[key] = value
                else:
                    info.attributes.pop(key, None)
            self.registry.updated(sim_room, info)
        self.send(rtc.SignalResponse(request_response=response))

    # -- publisher side --------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack, mid: str) -> None:
        cid = track.id if track.id in self._pending_tracks else None
        if cid is None:  # no msid match: the oldest pending track of that kind
            kind = models.TrackType.AUDIO if track.kind == "audio" else models.TrackType.VIDEO
            cid = next((c for c, t in self._pending_tracks.items() if t.type == kind), None)
        if cid is None:
            log.info("%s sent a %s track it never announced; ignored", self.identity, track.kind)
            return
        info = self._pending_tracks.pop(cid)
        info.mid = mid
        info.mime_type = "audio/opus" if track.kind == "audio" else "video/vp8"
        try:
            pub = self.hub.publish(self.room_name, self.identity, info, track)
        except KeyError:
            return  # left meanwhile
        if track.kind == "audio":
            self.hub.capture(self.room_name, pub)

    def _on_data_channel(self, channel: RTCDataChannel) -> None:
        kind = {RELIABLE_LABEL: RELIABLE, LOSSY_LABEL: LOSSY}.get(channel.label)
        if kind is None:
            return  # _data_track: data tracks are not emulated

        @channel.on("message")
        def on_message(message: bytes | str) -> None:
            if not isinstance(message, bytes) or not self.permission.can_publish_data:
                return
            try:
                dp = models.DataPacket.FromString(message)
            except Exception:
                log.info("undecodable data packet from %s", self.identity)
                return
            self.hub.route(self.room_name, self.sender, kind, dp)

    # -- Endpoint (subscriber side) --------------------------------------------------------

    def send_updates(self, infos: list[models.ParticipantInfo]) -> None:
        self.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=infos)))

    def deliver(self, dp: models.DataPacket) -> None:
        if self.subscriber is None:
            return
        label = RELIABLE_LABEL if dp.kind == RELIABLE else LOSSY_LABEL
        channel = self.subscriber.reliable if label == RELIABLE_LABEL else self.subscriber.lossy
        data = dp.SerializeToString()
        if channel.readyState == "open":
            channel.send(data)
        elif len(self._queued_packets[label]) < MAX_QUEUED_PACKETS:
            self._queued_packets[label].append(data)

    def _flush_channel(self, label: str) -> None:
        assert self.subscriber is not None
        channel = self.subscriber.reliable if label == RELIABLE_LABEL else self.subscriber.lossy
        queued, self._queued_packets[label] = self._queued_packets[label], []
        for data in queued:
            channel.send(data)

    def subscribe(self, pub: Publication) -> None:
        if self.subscriber is None or pub.info.sid in self._sending:
            return
        reader = pub.reader()
        transceiver = self.subscriber.add_track(reader, pub.stream_id)
        self._sending[pub.info.sid] = (transceiver, reader)
        self._spawn(self._negotiate(pub))

    def unsubscribe(self, pub: Publication) -> None:
        sending = self._sending.pop(pub.info.sid, None)
        if sending is None or self.subscriber is None:
            return
        transceiver, reader = sending
        reader.stop()
        self._spawn(self._remove(transceiver))

    def subscription_ready(self, track_sid: str) -> None:
        self.send(rtc.SignalResponse(track_subscribed=rtc.TrackSubscribed(track_sid=track_sid)))

    def disconnect(self, reason: models.DisconnectReason) -> None:
        """The server ends this session: tell the client why, then close."""
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self.close(reason))

    async def close(self, reason: models.DisconnectReason) -> None:
        """Send `leave` with `reason`, let every queued message out, close the socket."""
        if self._closing:
            return
        leave = rtc.LeaveRequest(reason=reason, action=rtc.LeaveRequest.Action.DISCONNECT)
        self.send(rtc.SignalResponse(leave=leave))
        self._closing = True
        self._outbox.put_nowait(None)
        if self._writer is not None:
            await asyncio.wait({self._writer}, timeout=2.0)
        await self.ws.close()

    async def _remove(self, transceiver: RTCRtpTransceiver) -> None:
        assert self.subscriber is not None
        await self.subscriber.remove_track(transceiver)
        await self._negotiate()

    async def _negotiate(self, pub: Publication | None = None) -> None:
        assert self.subscriber is not None
        try:
            await self.subscriber.negotiate()
        except (TimeoutError, ConnectionError) as exc:
            log.warning("subscriber negotiation with %s failed: %r", self.identity, exc)
            return
        if pub is not None:
            self.hub.subscription_ready(self.room_name, pub, self.identity)

    async def _send_offer(self, sdp: str) -> None:
        self.send(rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp=sdp)))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _now_ms() -> int:
    return int(time.time() * 1000)
