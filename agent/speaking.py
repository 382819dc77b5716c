"""How long each participant spoke, measured from the audio the agent receives.

A participant speaks during a 10 ms frame whose energy (RMS level) is over `threshold_dbfs`;
a pause between two such frames that is shorter than `hangover_s` counts as speech too, the
"hangover" of voice activity detectors, so the gaps between words are not taken for silence.
Every audio track a participant publishes is measured, and their times add up. The figure is
per participant session (sid): someone who leaves and comes back starts from zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import defaultdict

import numpy as np
from livekit import rtc

SAMPLE_RATE = 16_000  # enough for speech energy, a third of the work of 48 kHz
FRAME_MS = 10
DEFAULT_THRESHOLD_DBFS = -45.0
DEFAULT_HANGOVER_S = 0.3


def frame_dbfs(frame: rtc.AudioFrame) -> float:
    """RMS level of a 16-bit frame relative to full scale; -inf for digital silence."""
    samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float64)
    if samples.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(np.square(samples))))
    return 20 * math.log10(rms / 32768) if rms > 0 else -math.inf


class _SpeechRun:
    """Speaking frames of one track: voiced frames, plus short pauses between them."""

    def __init__(self, hangover_frames: int) -> None:
        self.frames = 0
        self._hangover_frames = hangover_frames
        self._silent_since_voice: int | None = None  # None: no voiced frame yet

    def add(self, voiced: bool) -> None:
        if not voiced:
            if self._silent_since_voice is not None:
                self._silent_since_voice += 1
            return
        gap = self._silent_since_voice
        self.frames += 1 + (gap if gap is not None and gap <= self._hangover_frames else 0)
        self._silent_since_voice = 0


class SpeakingMeter:
    """Seconds of speech per remote participant, from every audio track the room delivers."""

    def __init__(
        self,
        *,
        threshold_dbfs: float = DEFAULT_THRESHOLD_DBFS,
        hangover_s: float = DEFAULT_HANGOVER_S,
    ) -> None:
        self.threshold_dbfs = threshold_dbfs
        self._hangover_frames = round(hangover_s * 1000 / FRAME_MS)
        self._runs: defaultdict[str, list[_SpeechRun]] = defaultdict(list)
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, room: rtc.Room) -> None:
        """Measure every audio track `room` subscribes to, from now on."""
        room.on("track_subscribed", self._on_track_subscribed)

    def speaking_time_s(self, participant_sid: str) -> float | None:
        """Seconds the participant spoke; None if no audio of it was ever received."""
        runs = self._runs.get(participant_sid)
        if runs is None:
            return None
        return round(sum(run.frames for run in runs) * FRAME_MS / 1000, 2)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if not isinstance(track, rtc.RemoteAudioTrack):
            return
        run = _SpeechRun(self._hangover_frames)
        self._runs[participant.sid].append(run)
        task = asyncio.create_task(self._measure(track, run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _measure(self, track: rtc.RemoteAudioTrack, run: _SpeechRun) -> None:
        stream = rtc.AudioStream(
            track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=FRAME_MS
        )
        try:
            async for event in stream:
                run.add(frame_dbfs(event.frame) > self.threshold_dbfs)
        finally:
            await stream.aclose()
