"""Calls' audio with aiortc: voice-sized Opus, sources and sinks, one `MediaSession` per call.

session = MediaSession(call_id, WavSource("hello.wav"), WavRecorder("heard.wav"),
                       CallConfig(ice_servers=(IceServer("stun:…"), IceServer("turn:…", u, p))))
offer = await session.create_offer()          # sign it, send it in the INVITE
await session.apply_answer(verified_answer)   # the ACCEPT's SDP, signature checked
await session.wait_connected()
print(await session.stats())
await session.close()
"""

from peerphone.media.call import (
    CallConfig,
    CallFailed,
    IceServer,
    MediaSession,
    MediaState,
)
from peerphone.media.opus import OpusEncoderTrack, OpusSettings
from peerphone.media.sdp import certificate_fingerprint, sdp_candidates, sdp_fingerprints
from peerphone.media.sinks import AudioSink, DiscardSink, SpeakerSink, WavRecorder
from peerphone.media.sources import (
    AudioDeviceUnavailable,
    AudioFileError,
    PacedAudioSource,
    ReferenceSignalSource,
    SilenceSource,
    ToneSource,
    WavSource,
    microphone,
    reference_signal,
)

__all__ = [
    "AudioDeviceUnavailable",
    "AudioFileError",
    "AudioSink",
    "CallConfig",
    "CallFailed",
    "DiscardSink",
    "IceServer",
    "MediaSession",
    "MediaState",
    "OpusEncoderTrack",
    "OpusSettings",
    "PacedAudioSource",
    "ReferenceSignalSource",
    "SilenceSource",
    "SpeakerSink",
    "ToneSource",
    "WavRecorder",
    "WavSource",
    "certificate_fingerprint",
    "microphone",
    "reference_signal",
    "sdp_candidates",
    "sdp_fingerprints",
]
