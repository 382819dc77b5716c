"""Audio for simulated participants: what they say, and what the sim hears.

- `SpeechSource` is a simulated participant's microphone: a live aiortc track of 20 ms frames
  (48 kHz mono s16) that plays queued clips on the wall clock and silence in between, like a
  person who talks whether or not anyone listens;
- `AudioCapture` records a track (what an SDK participant publishes) as 48 kHz mono PCM that a
  test can measure or save as WAV;
- `load_wav`, `tone`, `wav_bytes` and `active_speech_s` are the conversions and the one
  measurement both sides share.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import io
import logging
import math
import time
import wave
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms, Opus' usual frame
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
# A reader late by less than this catches up (a burst, nothing lost); a source nobody read
# for longer jumps to "now", and the speech it missed is lost, as in a real call.
_MAX_LAG_S = 1.0
# Speech detection used by tests: a 10 ms window is speech above -45 dBFS, and pauses shorter
# than 300 ms inside speech count as speech (the usual VAD "hangover").
SPEECH_THRESHOLD_DBFS = -45.0
SPEECH_WINDOW_S = 0.01
SPEECH_HANGOVER_S = 0.3

Samples = npt.NDArray[np.int16]


def _to_int16(values: npt.NDArray[np.floating] | npt.NDArray[np.integer]) -> Samples:
    out: Samples = np.clip(np.rint(values), -32768, 32767).astype(np.int16)
    return out


def load_wav(path: str | Path) -> Samples:
    """A 16-bit PCM WAV file as 48 kHz mono samples (channels averaged, linearly resampled)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV files are supported")
        channels, rate = wav.getnchannels(), wav.getframerate()
        raw = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    mono = raw.reshape(-1, channels).mean(axis=1) if channels > 1 else raw.astype(np.float64)
    if rate != SAMPLE_RATE and len(mono):
        n_out = round(len(mono) * SAMPLE_RATE / rate)
        mono = np.interp(np.linspace(0, len(mono) - 1, n_out), np.arange(len(mono)), mono)
    return _to_int16(mono)


def tone(duration_s: float, *, hz: float = 440.0, dbfs: float = -12.0) -> Samples:
    """A sine tone at `dbfs` RMS: a stand-in for speech where words do not matter."""
    n = round(duration_s * SAMPLE_RATE)
    amplitude = 32767 * math.sqrt(2) * 10 ** (dbfs / 20)
    return _to_int16(amplitude * np.sin(2 * np.pi * hz * np.arange(n) / SAMPLE_RATE))


def wav_bytes(samples: Samples, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono 16-bit samples as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


def rms_dbfs(samples: Samples) -> float:
    """Root-mean-square level relative to full scale; -inf for silence or no samples."""
    if len(samples) == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(np.square(samples.astype(np.float64)))))
    return 20 * math.log10(rms / 32768) if rms > 0 else -math.inf


def active_speech_s(
    samples: Samples,
    *,
    threshold_dbfs: float = SPEECH_THRESHOLD_DBFS,
    hangover_s: float = SPEECH_HANGOVER_S,
) -> float:
    """Seconds of speech in 48 kHz mono samples: windows over the threshold, with pauses
    shorter than `hangover_s` between them counted as speech."""
    window = round(SPEECH_WINDOW_S * SAMPLE_RATE)
    n = len(samples) // window
    if n == 0:
        return 0.0
    blocks = samples[: n * window].astype(np.float64).reshape(n, window)
    rms = np.sqrt(np.mean(np.square(blocks), axis=1))
    voiced = rms > 32768 * 10 ** (threshold_dbfs / 20)
    total, last_voiced = 0, None
    for i in np.flatnonzero(voiced):
        gap = 1 if last_voiced is None else int(i) - last_voiced
        total += gap if gap * SPEECH_WINDOW_S <= hangover_s else 1
        last_voiced = int(i)
    return total * SPEECH_WINDOW_S


def frame_to_mono(frame: av.AudioFrame) -> Samples:
    """Any s16 frame (packed or planar, any channel count) as mono samples."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        mono = data.mean(axis=0)
    else:
        mono = data.reshape(-1, channels).mean(axis=1) if channels > 1 else data.reshape(-1)
    if frame.format.name not in ("s16", "s16p"):
        # float formats: scale to 16-bit
        mono = mono * 32767
    return _to_int16(mono)


@dataclass
class _Clip:
    start_s: float  # time.monotonic() of its first sample
    samples: Samples

    @property
    def end_s(self) -> float:
        return self.start_s + len(self.samples) / SAMPLE_RATE


class SpeechSource(MediaStreamTrack):
    """A simulated microphone: `say()` queues a clip that plays from now (or after the clip
    already playing); frames cover wall-clock time, so speech nobody reads is lost, as in a
    real call. Many readers share it through a MediaRelay."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._clips: deque[_Clip] = deque()
        self._start_s: float | None = None
        self._pts = 0

    def say(self, samples: Samples) -> float:
        """Queue `samples` (48 kHz mono); returns the monotonic time at which they end."""
        now = time.monotonic()
        start = max(now, self._clips[-1].end_s) if self._clips else now
        clip = _Clip(start, samples)
        self._clips.append(clip)
        return clip.end_s

    @property
    def speaking_until_s(self) -> float:
        """Monotonic time at which the queued speech ends (in the past when silent)."""
        return self._clips[-1].end_s if self._clips else 0.0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start_s is None:
            self._start_s, self._pts = now, 0
        else:
            self._pts += FRAME_SAMPLES
            due = self._start_s + self._pts / SAMPLE_RATE
            if now - due > _MAX_LAG_S:
                self._start_s, self._pts = now, 0  # nobody read us for a while
            elif due > now:
                await asyncio.sleep(due - now)
        at = self._start_s + self._pts / SAMPLE_RATE
        frame = av.AudioFrame.from_ndarray(
            self._mix(at).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame

    def _mix(self, at_s: float) -> Samples:
        out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        while self._clips and self._clips[0].end_s <= at_s:
            self._clips.popleft()
        for clip in self._clips:
            offset = round((at_s - clip.start_s) * SAMPLE_RATE)
            if offset >= len(clip.samples) or offset + FRAME_SAMPLES <= 0:
                continue
            lo, hi = max(offset, 0), min(offset + FRAME_SAMPLES, len(clip.samples))
            out[lo - offset : hi - offset] = clip.samples[lo:hi]
        return out


class AudioCapture:
    """Everything one track delivered, as 48 kHz mono PCM, up to `max_s` seconds.

    `samples()` is the audio in arrival order (gaps in delivery are not filled);
    `first_frame_at_s` / `last_frame_at_s` are monotonic times of delivery.
    """

    def __init__(self, participant: str, track_sid: str, *, max_s: float = 600.0) -> None:
        self.participant = participant
        self.track_sid = track_sid
        self.frames = 0
        self.first_frame_at_s: float | None = None
        self.last_frame_at_s: float | None = None
        self._chunks: list[Samples] = []
        self._max_samples = round(max_s * SAMPLE_RATE)
        self._n_samples = 0
        self._task: asyncio.Task[None] | None = None

    def start(self, track: MediaStreamTrack) -> None:
        """Read `track` in the background until it ends."""
        self._task = asyncio.get_running_loop().create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            self.add(frame_to_mono(frame))

    def add(self, samples: Samples) -> None:
        now = time.monotonic()
        if self.first_frame_at_s is None:
            self.first_frame_at_s = now
        self.last_frame_at_s = now
        self.frames += 1
        room = self._max_samples - self._n_samples
        if room > 0:
            self._chunks.append(samples[:room])
            self._n_samples += min(room, len(samples))

    def samples(self) -> Samples:
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)

    @property
    def duration_s(self) -> float:
        return self._n_samples / SAMPLE_RATE

    def speech_s(self) -> float:
        """Seconds of speech in the capture (see `active_speech_s`)."""
        return active_speech_s(self.samples())

    def wav(self) -> bytes:
        return wav_bytes(self.samples())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
