"""The media side's parts that need no WebRTC: data stamping and routing between simulated
participants, text stream framing, the speech source and the speech measure, the control API.
(The real SDK over WebRTC is tested in tests/media.)"""

from __future__ import annotations

import base64
import zlib

import aiohttp
import numpy as np
import pytest
from livekit.protocol import metrics as lk_metrics
from livekit.protocol import models

from livekit_sim import LiveKitSim
from livekit_sim.rtc import active_speech_s, tone
from livekit_sim.rtc.data import Sender, TextStreams, stamp, text_stream_packets
from livekit_sim.rtc.media import SAMPLE_RATE, SpeechSource, frame_to_mono, rms_dbfs

pytestmark = pytest.mark.integration

RELIABLE = models.DataPacket.Kind.RELIABLE


def test_stamp_asserts_the_sender_over_what_the_client_claimed() -> None:
    dp = models.DataPacket(
        participant_identity="someone-else",
        user=models.UserPacket(payload=b"x", participant_identity="someone-else"),
        destination_identities=["caller"],
    )
    assert stamp(dp, RELIABLE, Sender("bot", "PA_bot"))
    assert (dp.participant_identity, dp.participant_sid) == ("bot", "PA_bot")
    assert (dp.user.participant_identity, dp.user.participant_sid) == ("bot", "PA_bot")
    assert list(dp.user.destination_identities) == ["caller"]


def test_an_agent_may_send_text_on_behalf_of_a_participant_but_others_may_not() -> None:
    def header_from(claimed: str) -> models.DataPacket:
        header = models.DataStream.Header(stream_id="s", text_header=models.DataStream.TextHeader())
        return models.DataPacket(participant_identity=claimed, stream_header=header)

    by_agent = header_from("caller")
    assert stamp(by_agent, RELIABLE, Sender("agent-1", "PA_a", is_agent=True))
    assert by_agent.participant_identity == "caller"
    assert by_agent.stream_header.text_header.generated
    by_person = header_from("caller")
    assert stamp(by_person, RELIABLE, Sender("mallory", "PA_m"))
    assert by_person.participant_identity == "mallory"


def test_transcriptions_are_only_forwarded_from_agents_and_metrics_never() -> None:
    transcription = models.DataPacket(transcription=models.Transcription())
    assert not stamp(transcription, RELIABLE, Sender("caller", "PA_c"))
    assert stamp(transcription, RELIABLE, Sender("agent", "PA_a", is_agent=True))
    metrics = models.DataPacket(metrics=lk_metrics.MetricsBatch())
    assert not stamp(metrics, RELIABLE, Sender("agent", "PA_a", is_agent=True))


def test_text_streams_reassemble_chunked_inline_and_compressed_messages() -> None:
    streams = TextStreams()
    long_text = "é" * 20_000  # more than one chunk
    done = [streams.feed(dp) for dp in text_stream_packets(long_text, topic="t")]
    assert [m.text for m in done if m] == [long_text]

    compressor = zlib.compressobj(wbits=-15)
    body = compressor.compress(b"squeezed") + compressor.flush()
    header = models.DataStream.Header(
        stream_id="z",
        topic="t",
        inline_content=body,
        compression=models.DataStream.CompressionType.DEFLATE_RAW,
        text_header=models.DataStream.TextHeader(),
    )
    assert streams.feed(models.DataPacket(stream_header=header)) is None
    message = streams.feed(
        models.DataPacket(stream_trailer=models.DataStream.Trailer(stream_id="z"))
    )
    assert message is not None
    assert message.text == "squeezed"


def test_active_speech_bridges_short_pauses_only() -> None:
    silence = np.zeros(SAMPLE_RATE // 5, dtype=np.int16)  # 200 ms
    long_silence = np.zeros(SAMPLE_RATE, dtype=np.int16)
    speech = np.concatenate([tone(0.5), silence, tone(0.5), long_silence, tone(0.3)])
    assert active_speech_s(speech) == pytest.approx(1.5, abs=0.02)
    assert active_speech_s(tone(1.0, dbfs=-60)) == 0.0
    assert rms_dbfs(tone(1.0, dbfs=-20)) == pytest.approx(-20, abs=0.1)


async def test_speech_source_plays_clips_on_the_wall_clock() -> None:
    source = SpeechSource()
    first = await source.recv()
    assert rms_dbfs(frame_to_mono(first)) == -np.inf
    source.say(tone(0.2))
    frames = [frame_to_mono(await source.recv()) for _ in range(15)]  # 300 ms
    loud = [rms_dbfs(f) > -30 for f in frames]
    assert 9 <= sum(loud) <= 11  # 200 ms of 20 ms frames, give or take the boundary
    assert not loud[-1]
    source.stop()


async def test_simulated_participants_exchange_data_and_text_by_destination(
    sim: LiveKitSim,
) -> None:
    for identity in ("a", "b", "c"):
        await sim.join_participant("room", identity)
    a, b, c = (sim.simulated("room", i) for i in ("a", "b", "c"))
    assert a.send_data(b"to b", topic="t", destination_identities=["b"]) == ["b"]
    assert sorted(a.send_text("to all", topic="chat")) == ["b", "c"]
    assert [(d.sender, d.payload) for d in b.data] == [("a", b"to b")]
    assert c.data == []
    assert [(t.sender, t.text) for t in c.texts] == [("a", "to all")]
    assert [t.text for t in sim.texts("room", topic="chat")] == ["to all"]
    await sim.leave_participant("room", "b")
    assert a.send_data(b"again") == ["c"]
    with pytest.raises(RuntimeError, match="has left"):
        b.send_data(b"gone")


async def test_a_simulated_microphone_is_a_published_track(sim: LiveKitSim) -> None:
    await sim.join_participant("room", "caller", audio=True)
    [info] = sim.participants("room")
    [track] = info.tracks
    assert track.sid.startswith("TR_")
    assert (track.type, track.source) == (models.TrackType.AUDIO, models.TrackSource.MICROPHONE)
    assert info.is_publisher
    assert await sim.say("room", "caller", tone(0.5)) == pytest.approx(0.5, abs=0.05)


async def test_control_api_drives_simulated_participants(sim: LiveKitSim) -> None:
    base = f"{sim.url}/_sim/rooms/r1"
    async with aiohttp.ClientSession() as http:
        for identity, audio in (("caller", True), ("peer", False)):
            async with http.post(
                f"{base}/participants", json={"identity": identity, "audio": audio}
            ) as resp:
                assert resp.status == 200
        async with http.post(
            f"{base}/participants/caller/say", json={"duration_s": 0.4, "tone_hz": 300}
        ) as resp:
            assert (await resp.json())["speaking_s"] == pytest.approx(0.4, abs=0.05)
        async with http.post(
            f"{base}/participants/caller/data",
            json={"payload_base64": base64.b64encode(b"\x00\x01").decode(), "topic": "bin"},
        ) as resp:
            assert (await resp.json())["delivered_to"] == ["peer"]
        async with http.post(
            f"{base}/participants/caller/text",
            json={"text": "hello", "topic": "chat", "destination_identities": ["nobody"]},
        ) as resp:
            assert (await resp.json())["delivered_to"] == []
        async with http.get(f"{base}/participants/peer/received") as resp:
            received = await resp.json()
        assert received["data"] == [
            {"sender": "caller", "topic": "bin", "payload_base64": "AAE=", "reliable": True}
        ]
        async with http.get(f"{base}/texts?topic=chat") as resp:
            [text] = (await resp.json())["texts"]
            assert (text["sender"], text["text"], text["destinations"]) == (
                "caller",
                "hello",
                ["nobody"],
            )
        async with http.get(f"{base}/audio/caller") as resp:
            assert resp.status == 404  # only SDK participants' audio is captured
        async with http.post(f"{base}/participants/ghost/say", json={"duration_s": 1}) as resp:
            assert resp.status == 404
        async with http.post(f"{base}/participants/caller/say", json={}) as resp:
            assert resp.status == 400
