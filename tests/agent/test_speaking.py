"""The speaking-time measure of agent.speaking, on frames made here (the end-to-end test with
real audio over WebRTC is tests/media/test_agent_session.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from livekit import rtc

from agent.speaking import FRAME_MS, SAMPLE_RATE, SpeakingMeter, _SpeechRun, frame_dbfs

pytestmark = pytest.mark.unit


def frame(level_dbfs: float | None) -> rtc.AudioFrame:
    """A 10 ms 16 kHz frame: a sine at `level_dbfs` RMS, or digital silence for None."""
    n = SAMPLE_RATE * FRAME_MS // 1000
    if level_dbfs is None:
        samples = np.zeros(n, dtype=np.int16)
    else:
        amplitude = 32767 * math.sqrt(2) * 10 ** (level_dbfs / 20)
        samples = (amplitude * np.sin(2 * np.pi * 300 * np.arange(n) / SAMPLE_RATE)).astype(
            np.int16
        )
    return rtc.AudioFrame(samples.tobytes(), SAMPLE_RATE, 1, n)


def test_frame_level_is_its_rms_relative_to_full_scale() -> None:
    assert frame_dbfs(frame(-20)) == pytest.approx(-20, abs=0.2)
    assert frame_dbfs(frame(None)) == -math.inf


def test_pauses_shorter_than_the_hangover_count_as_speech() -> None:
    run = _SpeechRun(hangover_frames=30)  # 300 ms
    for voiced in [True] * 50 + [False] * 20 + [True] * 50:  # 0.5 s, 0.2 s pause, 0.5 s
        run.add(voiced)
    assert run.frames == 120
    for voiced in [False] * 100 + [True] * 10:  # a 1 s pause is silence
        run.add(voiced)
    assert run.frames == 130
    trailing = _SpeechRun(hangover_frames=30)
    for voiced in [False] * 10 + [True] * 5 + [False] * 10:  # silence at either end
        trailing.add(voiced)
    assert trailing.frames == 5


def test_a_participant_without_audio_has_no_speaking_time() -> None:
    assert SpeakingMeter().speaking_time_s("PA_nobody") is None
