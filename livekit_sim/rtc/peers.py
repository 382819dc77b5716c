"""The two peer connections of one SDK participant (LiveKit's v0 "dual PC" mode), on aiortc.

- `PublisherPeer`: the client offers, the sim answers. It carries what the client sends: its
  audio tracks and its `_reliable` / `_lossy` data channels.
- `SubscriberPeer`: the sim offers, the client answers. It carries what the client receives:
  the tracks it is subscribed to (each with the msid "<participant sid>|<track sid>" the SDK
  needs to map media to a publication) and the sim's own `_reliable` / `_lossy` channels.
  Offers are serialised: the next one waits for the answer to the previous one.

aiortc gathers its candidates before it sends a description, so the sim's candidates travel
in the SDP; the client's arrive by trickle and wait until the remote description is set.
No STUN or TURN server is ever configured: only host candidates, only local interfaces.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp

log = logging.getLogger(__name__)

RELIABLE_LABEL = "_reliable"
LOSSY_LABEL = "_lossy"
ANSWER_TIMEOUT_S = 10.0


def new_peer_connection(bundle_policy: RTCBundlePolicy) -> RTCPeerConnection:
    # iceServers=[]: aiortc would otherwise ask a public STUN server for a reflexive candidate.
    return RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=bundle_policy))


def parse_candidate_init(candidate_init: str) -> RTCIceCandidate | None:
    """A TrickleRequest's JSON `{"candidate", "sdpMid", "sdpMLineIndex"}` as an aiortc
    candidate; None for end-of-candidates and for non-UDP candidates (aioice is UDP only)."""
    data = json.loads(candidate_init)
    line = str(data.get("candidate") or "")
    if not line:
        return None
    candidate = candidate_from_sdp(line.removeprefix("candidate:"))
    if candidate.protocol.lower() != "udp":
        return None
    candidate.sdpMid = data.get("sdpMid")
    candidate.sdpMLineIndex = data.get("sdpMLineIndex")
    return candidate


class _Peer:
    bundle_policy = RTCBundlePolicy.MAX_BUNDLE

    def __init__(self, on_connected: Callable[[], None]) -> None:
        self.pc = new_peer_connection(self.bundle_policy)
        self._pending_candidates: list[RTCIceCandidate] = []
        self._on_connected = on_connected
        self.pc.on("connectionstatechange", self._state_changed)

    @property
    def connected(self) -> bool:
        return self.pc.connectionState == "connected"

    def _state_changed(self) -> None:
        log.debug("%s state %s", type(self).__name__, self.pc.connectionState)
        if self.pc.connectionState == "connected":
            self._on_connected()

    async def add_candidate(self, candidate_init: str) -> None:
        candidate = parse_candidate_init(candidate_init)
        if candidate is None:
            return
        if self.pc.remoteDescription is None:
            self._pending_candidates.append(candidate)
        else:
            await self.pc.addIceCandidate(candidate)

    async def _flush_candidates(self) -> None:
        pending, self._pending_candidates = self._pending_candidates, []
        for candidate in pending:
            await self.pc.addIceCandidate(candidate)

    async def close(self) -> None:
        await self.pc.close()


class PublisherPeer(_Peer):
    """Answers the client's offers; reports its tracks and data channels."""

    def __init__(
        self,
        *,
        on_connected: Callable[[], None],
        on_track: Callable[[MediaStreamTrack, str], None],
        on_data_channel: Callable[[RTCDataChannel], None],
    ) -> None:
        super().__init__(on_connected)
        self._on_track = on_track
        self.pc.on("datachannel", on_data_channel)
        self.pc.on("track", self._track)

    def _track(self, track: MediaStreamTrack) -> None:
        mid = next(
            (t.mid or "" for t in self.pc.getTransceivers() if t.receiver.track is track), ""
        )
        self._on_track(track, mid)

    async def answer(self, offer_sdp: str) -> str:
        """Apply the client's offer; the sim's answer SDP."""
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        await self._flush_candidates()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp


class SubscriberPeer(_Peer):
    """Offers the client what it subscribes to; one negotiation at a time."""

    # aiortc with max-bundle puts a transceiver added after the data channels on the SCTP
    # transport, then stops that very transport when the answer's BUNDLE group is applied.
    bundle_policy = RTCBundlePolicy.BALANCED

    def __init__(
        self,
        *,
        send_offer: Callable[[str], Awaitable[None]],
        on_connected: Callable[[], None],
    ) -> None:
        super().__init__(on_connected)
        self._send_offer = send_offer
        self.reliable = self.pc.createDataChannel(RELIABLE_LABEL, ordered=True)
        self.lossy = self.pc.createDataChannel(LOSSY_LABEL, ordered=False, maxRetransmits=0)
        self._lock = asyncio.Lock()
        self._answer: asyncio.Future[str] | None = None
        self._changes = 1  # the data channels
        self._offered = 0

    def add_track(self, track: MediaStreamTrack, stream_id: str) -> RTCRtpTransceiver:
        """Send `track` with msid `stream_id`; takes effect at the next `negotiate()`."""
        self._changes += 1
        transceiver = self.pc.addTransceiver(track, direction="sendonly")
        # aiortc gives every sender the connection's one random stream id; the SDK needs ours.
        transceiver.sender._stream_id = stream_id
        return transceiver

    async def remove_track(self, transceiver: RTCRtpTransceiver) -> None:
        """Stop sending on `transceiver`; takes effect at the next `negotiate()`."""
        self._changes += 1
        transceiver.sender.replaceTrack(None)
        transceiver.direction = "inactive"

    async def negotiate(self) -> None:
        """Offer every change made so far, unless an answered offer already covered it."""
        async with self._lock:
            while self._offered < self._changes:
                self._offered = self._changes
                await self._negotiate_once()

    async def _negotiate_once(self) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self._answer = asyncio.get_running_loop().create_future()
        await self._send_offer(self.pc.localDescription.sdp)
        try:
            sdp = await asyncio.wait_for(self._answer, ANSWER_TIMEOUT_S)
        finally:
            self._answer = None
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        await self._flush_candidates()

    def on_answer(self, sdp: str) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(sdp)
        else:
            log.warning("subscriber answer without a pending offer; ignored")
