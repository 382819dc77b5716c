"""Data packets as livekit-server routes them (pkg/rtc/participant.go handleReceivedDataMessage,
room.go BroadcastDataPacketForRoom), and text streams as the SDKs frame them.

- `stamp` asserts the sender: `participant_identity` / `participant_sid` (and the user packet's
  copies) become the sender's, except where the real server lets an agent speak for someone
  else (chat messages, generated text streams); it returns False for packets never forwarded;
- `addressed_to` applies `destination_identities` (and legacy destination sids);
- `TextStreams` reassembles text streams (inline or chunked, deflate-raw or plain) into
  messages, and `text_stream_packets` frames a message the way `send_text` does.
"""

from __future__ import annotations

import time
import uuid
import zlib
from dataclasses import dataclass, field

from livekit.protocol import models

# livekit's STREAM_CHUNK_SIZE: chunks stay under the SCTP message size.
STREAM_CHUNK_BYTES = 15_000
RELIABLE = models.DataPacket.Kind.RELIABLE
LOSSY = models.DataPacket.Kind.LOSSY


@dataclass(frozen=True)
class Sender:
    """Who sent a packet, as the server knows it."""

    identity: str
    sid: str
    is_agent: bool = False
    hidden: bool = False


def stamp(dp: models.DataPacket, kind: models.DataPacket.Kind, sender: Sender) -> bool:
    """Rewrite `dp` in place as the server does before forwarding; False: do not forward."""
    dp.participant_sid = sender.sid
    dp.kind = kind  # the channel it came in on is the source of truth
    which = dp.WhichOneof("value")
    override_identity = True
    if which == "user":
        user = dp.user
        user.participant_sid = "" if sender.hidden else sender.sid
        user.participant_identity = "" if sender.hidden else sender.identity
        if dp.destination_identities:
            user.destination_identities[:] = list(dp.destination_identities)
        else:
            dp.destination_identities[:] = list(user.destination_identities)
    elif which == "transcription":
        if not sender.is_agent:
            return False
    elif which == "metrics":
        return False  # metrics go to the server's telemetry, not to participants
    elif which == "chat_message" or which == "stream_header":
        speaks_for_other = sender.is_agent and dp.participant_identity not in ("", sender.identity)
        if speaks_for_other and which == "chat_message":
            dp.chat_message.generated = True
            override_identity = False
        if speaks_for_other and dp.stream_header.WhichOneof("content_header") == "text_header":
            dp.stream_header.text_header.generated = True
            override_identity = False
    elif which is None:
        return False
    if override_identity:
        dp.participant_identity = "" if sender.hidden else sender.identity
    return True


def addressed_to(dp: models.DataPacket, identity: str, sid: str) -> bool:
    """Whether a stamped packet goes to the participant (`identity`, `sid`)."""
    identities = list(dp.destination_identities)
    sids = list(dp.user.destination_sids) if dp.WhichOneof("value") == "user" else []
    if not identities and not sids:
        return True
    return identity in identities or sid in sids


@dataclass
class TextMessage:
    """One complete text stream: what `send_text` sent."""

    sender: str
    topic: str
    text: str
    stream_id: str
    attributes: dict[str, str] = field(default_factory=dict)
    destinations: list[str] = field(default_factory=list)


@dataclass
class _Pending:
    header: models.DataStream.Header
    sender: str
    destinations: list[str]
    chunks: dict[int, bytes] = field(default_factory=dict)


class TextStreams:
    """Reassembles the text streams in a sequence of stamped packets; byte streams are ignored."""

    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}

    def feed(self, dp: models.DataPacket) -> TextMessage | None:
        """Take one packet; the message it completes, if any."""
        which = dp.WhichOneof("value")
        if which == "stream_header":
            header = dp.stream_header
            if header.WhichOneof("content_header") != "text_header":
                return None
            self._pending[header.stream_id] = _Pending(
                header, dp.participant_identity, list(dp.destination_identities)
            )
        elif which == "stream_chunk":
            pending = self._pending.get(dp.stream_chunk.stream_id)
            if pending is not None:
                pending.chunks[dp.stream_chunk.chunk_index] = dp.stream_chunk.content
        elif which == "stream_trailer":
            pending = self._pending.pop(dp.stream_trailer.stream_id, None)
            if pending is not None:
                return _complete(pending, dict(dp.stream_trailer.attributes))
        return None


def _complete(pending: _Pending, trailer_attributes: dict[str, str]) -> TextMessage:
    header = pending.header
    body = header.inline_content or b"".join(pending.chunks[i] for i in sorted(pending.chunks))
    if header.compression == models.DataStream.CompressionType.DEFLATE_RAW:
        body = zlib.decompress(body, wbits=-15)
    return TextMessage(
        sender=pending.sender,
        topic=header.topic,
        text=body.decode("utf-8", errors="replace"),
        stream_id=header.stream_id,
        attributes={**dict(header.attributes), **trailer_attributes},
        destinations=pending.destinations,
    )


def text_stream_packets(
    text: str, *, topic: str, destination_identities: list[str] | None = None
) -> list[models.DataPacket]:
    """Header, chunks and trailer of one uncompressed text stream, as `send_text` frames it."""
    stream_id = str(uuid.uuid4())
    body = text.encode()
    destinations = list(destination_identities or [])
    header = models.DataStream.Header(
        stream_id=stream_id,
        timestamp=int(time.time() * 1000),
        topic=topic,
        mime_type="text/plain",
        total_length=len(body),
        text_header=models.DataStream.TextHeader(
            operation_type=models.DataStream.OperationType.CREATE
        ),
    )
    packets = [models.DataPacket(stream_header=header, destination_identities=destinations)]
    for index, start in enumerate(range(0, len(body), STREAM_CHUNK_BYTES)):
        chunk = models.DataStream.Chunk(
            stream_id=stream_id, chunk_index=index, content=body[start : start + STREAM_CHUNK_BYTES]
        )
        packets.append(models.DataPacket(stream_chunk=chunk, destination_identities=destinations))
    trailer = models.DataStream.Trailer(stream_id=stream_id)
    packets.append(models.DataPacket(stream_trailer=trailer, destination_identities=destinations))
    return packets
