"""The real `livekit` SDK (the Rust FFI build livekit-agents uses) against the sim's `/rtc`:
connection, audio both ways, data and text both ways, and the room life cycle it feeds."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from livekit import api, rtc
from livekit.protocol import models

from livekit_sim import LiveKitSim
from livekit_sim.rtc import active_speech_s, tone
from tests.media.conftest import API_KEY, API_SECRET, CALLER_WAV, Hooks, frame_samples, sdk_room
from tests.support.waiting import eventually

pytestmark = [pytest.mark.media, pytest.mark.timeout(60)]


async def subscribed_audio(client: rtc.Room, identity: str) -> rtc.RemoteAudioTrack:
    """The audio track of `identity` once the client has subscribed to it."""

    def probe() -> rtc.RemoteAudioTrack | None:
        for participant in client.remote_participants.values():
            if participant.identity != identity:
                continue
            for pub in participant.track_publications.values():
                if isinstance(pub.track, rtc.RemoteAudioTrack):
                    return pub.track
        return None

    return await eventually(probe, timeout_s=10, what=f"a subscription to {identity}'s audio")


class Recorder:
    """Reads an audio track as 48 kHz mono samples in the background."""

    def __init__(self, track: rtc.Track) -> None:
        self.chunks: list[np.ndarray] = []
        self._stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self._stream:
            self.chunks.append(frame_samples(event.frame))

    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.int16)

    async def aclose(self) -> None:
        self._task.cancel()
        await self._stream.aclose()


async def test_the_sdk_connects_and_sees_a_simulated_caller(sim: LiveKitSim) -> None:
    await sim.join_participant("room-a", "caller", name="Caller", audio=True)
    async with sdk_room(sim, "bot", "room-a") as client:
        assert client.isconnected()
        assert client.local_participant.sid.startswith("PA_")
        caller = next(p for p in client.remote_participants.values() if p.identity == "caller")
        assert caller.name == "Caller"
        assert [p.source for p in caller.track_publications.values()] == [
            rtc.TrackSource.SOURCE_MICROPHONE
        ]
        bot = next(p for p in sim.participants("room-a") if p.identity == "bot")
        assert bot.state == models.ParticipantInfo.State.ACTIVE
        assert bot.kind == models.ParticipantInfo.Kind.STANDARD
    await eventually(
        lambda: "bot" not in {p.identity for p in sim.participants("room-a")},
        what="the disconnected client to leave the room",
    )


async def test_a_simulated_caller_speech_arrives_as_frames_with_energy(sim: LiveKitSim) -> None:
    await sim.join_participant("room-b", "caller", audio=True)
    async with sdk_room(sim, "bot", "room-b") as client:
        recorder = Recorder(await subscribed_audio(client, "caller"))
        try:
            await eventually(lambda: len(recorder.samples()) > 4800, what="audio frames")
            silent_before = active_speech_s(recorder.samples())
            speech_s = await sim.say("room-b", "caller", CALLER_WAV)
            assert speech_s == pytest.approx(2.0, abs=0.05)
            await eventually(
                lambda: active_speech_s(recorder.samples()) >= 1.8,
                timeout_s=8,
                what="the caller's 2 s of speech",
            )
            await asyncio.sleep(0.5)  # let the trailing silence arrive too
        finally:
            await recorder.aclose()
    assert silent_before == 0.0
    assert active_speech_s(recorder.samples()) == pytest.approx(2.0, rel=0.1)


async def test_audio_the_sdk_publishes_is_captured_by_the_sim(sim: LiveKitSim) -> None:
    async with sdk_room(sim, "bot", "room-c") as client:
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("voice", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        publication = await client.local_participant.publish_track(track, options)
        assert publication.sid.startswith("TR_")
        captures = await eventually(
            lambda: sim.captured_audio("room-c", "bot"), what="the sim to capture the track"
        )
        assert captures[0].track_sid == publication.sid
        samples = np.concatenate([np.zeros(24000, dtype=np.int16), tone(1.0, hz=300)])
        for start in range(0, len(samples), 480):
            chunk = samples[start : start + 480]
            await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), 48000, 1, len(chunk)))
        await eventually(
            lambda: captures[0].speech_s() >= 0.9, timeout_s=8, what="1 s of captured tone"
        )
        info = next(p for p in sim.participants("room-c") if p.identity == "bot")
        assert [t.sid for t in info.tracks] == [publication.sid]
    assert captures[0].wav()[:4] == b"RIFF"
    assert captures[0].speech_s() == pytest.approx(1.0, abs=0.15)


async def test_two_sdk_clients_hear_each_other(sim: LiveKitSim) -> None:
    async with sdk_room(sim, "alice", "room-d") as alice, sdk_room(sim, "bob", "room-d") as bob:
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("voice", source)
        await alice.local_participant.publish_track(track, rtc.TrackPublishOptions())
        recorder = Recorder(await subscribed_audio(bob, "alice"))
        try:
            samples = tone(1.0, hz=500)
            for start in range(0, len(samples), 480):
                chunk = samples[start : start + 480]
                await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), 48000, 1, 480))
            await eventually(
                lambda: active_speech_s(recorder.samples()) >= 0.7,
                timeout_s=8,
                what="bob to hear alice",
            )
        finally:
            await recorder.aclose()


async def test_data_and_text_flow_both_ways_stamped_and_addressed(sim: LiveKitSim) -> None:
    await sim.join_participant("room-e", "caller")
    await sim.join_participant("room-e", "listener")
    caller, listener = sim.simulated("room-e", "caller"), sim.simulated("room-e", "listener")
    async with sdk_room(sim, "bot", "room-e") as client:
        data: list[rtc.DataPacket] = []
        texts: list[tuple[str, str]] = []
        client.on("data_received", data.append)

        async def read_text(reader: rtc.TextStreamReader, sender: str) -> None:
            texts.append((sender, await reader.read_all()))

        client.register_text_stream_handler(
            "chat", lambda reader, sender: asyncio.ensure_future(read_text(reader, sender))
        )

        await client.local_participant.publish_data(
            b"only for the caller", topic="notes", destination_identities=["caller"]
        )
        await client.local_participant.send_text("hello everyone", topic="chat")
        await eventually(lambda: caller.texts and listener.texts, what="the text to arrive")
        assert [(d.sender, d.topic, d.payload) for d in caller.data] == [
            ("bot", "notes", b"only for the caller")
        ]
        assert listener.data == []
        assert [(t.sender, t.text) for t in listener.texts] == [("bot", "hello everyone")]

        assert caller.send_data(b"for the bot", topic="notes", destination_identities=["bot"]) == [
            "bot"
        ]
        assert listener.send_data(b"not for the bot", destination_identities=["caller"]) == [
            "caller"
        ]
        caller.send_text("hi bot", topic="chat")
        await eventually(lambda: data and texts, what="the bot to receive data and text")
        assert [(d.participant.identity if d.participant else None, d.data) for d in data] == [
            ("caller", b"for the bot")
        ]
        assert texts == [("caller", "hi bot")]
    assert [(m.sender, m.text) for m in sim.texts("room-e", topic="chat")] == [
        ("bot", "hello everyone"),
        ("caller", "hi bot"),
    ]


async def test_attributes_set_by_the_sdk_are_acknowledged_and_shared(sim: LiveKitSim) -> None:
    async with (
        sdk_room(sim, "bot", "room-f", can_update_metadata=True) as client,
        sdk_room(sim, "viewer", "room-f") as viewer,
    ):
        # set_attributes raises unless the server answers with a request_response in 5 s.
        await client.local_participant.set_attributes({"state": "ready"})

        def bot_seen_by_viewer() -> dict[str, str] | None:
            bot = next(
                (p for p in viewer.remote_participants.values() if p.identity == "bot"), None
            )
            return dict(bot.attributes) if bot else None

        assert await eventually(bot_seen_by_viewer, what="the viewer to see the attribute") == {
            "state": "ready"
        }
        info = next(p for p in sim.participants("room-f") if p.identity == "bot")
        assert dict(info.attributes) == {"state": "ready"}


async def test_sdk_presence_drives_webhooks_and_the_departure_timeout(
    sim: LiveKitSim, hooks: Hooks
) -> None:
    async with sdk_room(sim, "caller-app", "room-g"):
        await eventually(lambda: "participant_joined" in hooks.names(), what="participant_joined")
        assert "room-g" in sim.rooms
    await eventually(lambda: "room-g" not in sim.rooms, what="the departure timeout")
    await sim.settle()
    assert sorted(hooks.names()) == sorted(
        ["room_started", "participant_joined", "participant_left", "room_finished"]
    )


async def test_deleting_the_room_disconnects_the_sdk(sim: LiveKitSim) -> None:
    lkapi = api.LiveKitAPI(sim.url, API_KEY, API_SECRET)
    try:
        async with sdk_room(sim, "bot", "room-h") as client:
            reasons: list[int] = []
            client.on("disconnected", reasons.append)
            await lkapi.room.delete_room(api.DeleteRoomRequest(room="room-h"))
            await eventually(lambda: reasons, what="the client to be disconnected")
            assert reasons == [rtc.DisconnectReason.ROOM_DELETED]
    finally:
        await lkapi.aclose()


async def test_a_hidden_participant_is_listed_to_nobody(sim: LiveKitSim) -> None:
    # As LiveKit's server does with an agent registered with AGENT_HIDDEN=true.
    async with (
        sdk_room(sim, "watcher", "room-h", hidden=True) as watcher,
        sdk_room(sim, "caller", "room-h") as caller,
        sdk_room(sim, "late", "room-h") as late,
    ):
        await eventually(lambda: "late" in caller.remote_participants, what="the late joiner")
        await eventually(lambda: "caller" in watcher.remote_participants, what="the watcher sees")
        assert "watcher" not in caller.remote_participants
        assert "watcher" not in late.remote_participants
        assert set(late.remote_participants) == {"caller"}


async def test_a_participant_without_publish_cannot_publish(sim: LiveKitSim) -> None:
    # As LiveKit's server does with an agent registered with AGENT_CAN_PUBLISH=false.
    async with sdk_room(sim, "mute", "room-m", can_publish=False) as client:
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("voice", source)
        # The server ignores the request (as LiveKit's does: "no permission to publish
        # track"), so the SDK waits in vain for its track_published.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                client.local_participant.publish_track(track, rtc.TrackPublishOptions()), 5
            )
        await sim.settle()
        info = next(p for p in sim.participants("room-m") if p.identity == "mute")
        assert list(info.tracks) == []
        assert sim.captured_audio("room-m", "mute") == []
