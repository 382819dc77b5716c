"""Media for livekit_sim: `/rtc` signalling, WebRTC peer connections (aiortc), simulated
participants that speak and send data, and capture of what SDK participants publish."""

from livekit_sim.rtc.data import TextMessage
from livekit_sim.rtc.hub import DataRecord, Publication, RtcHub
from livekit_sim.rtc.media import AudioCapture, active_speech_s, load_wav, tone
from livekit_sim.rtc.signal import RtcSignalService
from livekit_sim.rtc.simulated import ReceivedData, SimulatedParticipant

__all__ = [
    "AudioCapture",
    "DataRecord",
    "Publication",
    "ReceivedData",
    "RtcHub",
    "RtcSignalService",
    "SimulatedParticipant",
    "TextMessage",
    "active_speech_s",
    "load_wav",
    "tone",
]
