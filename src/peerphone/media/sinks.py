"""Where a call's incoming audio goes: nowhere, a WAV file, or the sound card.

A sink is fed decoded frames by `MediaSession` (which reads aiortc's remote track itself,
so that frames can be dropped while the call is on hold). Frames arrive as aiortc decodes
them: 48 kHz s16 stereo; sinks downmix to mono.

aiortc's ``MediaRecorder`` is not used for files: it reads the track on its own (no hold),
writes the stereo it gets, and closes the timeline over gaps; `WavRecorder` keeps the
call's timeline (a gap in the RTP timestamps becomes silence, bounded per gap).
"""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
from av.audio.frame import AudioFrame

from peerphone.media.sources import BYTES_PER_SAMPLE, SAMPLE_RATE, AudioDeviceUnavailable

MAX_GAP_FILL_S = 10.0  # a timestamp jump beyond this (garbage or a long hold) is not filled


class AudioSink(Protocol):
    """Takes decoded audio frames of one call, in order; `close` once at the end."""

    def write(self, frame: AudioFrame) -> None: ...

    def close(self) -> None: ...


class DiscardSink:
    """Counts frames and drops them (a headless callee that only needs the statistics)."""

    def __init__(self) -> None:
        self.frames = 0
        self.samples = 0

    def write(self, frame: AudioFrame) -> None:
        self.frames += 1
        self.samples += frame.samples

    def close(self) -> None:
        pass


def _mono_resampler() -> av.AudioResampler:
    return av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)


def _sample_time(frame: AudioFrame) -> int | None:
    """The frame's start on the 48 kHz timeline, if it has one."""
    if frame.pts is None or frame.time_base is None:
        return None
    base = Fraction(frame.time_base.numerator, frame.time_base.denominator)
    return round(frame.pts * base * SAMPLE_RATE)


class WavRecorder:
    """Writes a call's incoming audio to a 48 kHz mono 16-bit WAV file, on its timeline."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.frames = 0
        self.samples_written = 0
        self.gap_samples_filled = 0
        self._file = wave.open(str(self.path), "wb")  # noqa: SIM115  # closed by close()
        self._file.setnchannels(1)
        self._file.setsampwidth(BYTES_PER_SAMPLE)
        self._file.setframerate(SAMPLE_RATE)
        self._resampler = _mono_resampler()
        self._origin: int | None = None  # timeline sample of the first frame
        self._closed = False

    def write(self, frame: AudioFrame) -> None:
        if self._closed:
            return
        start = _sample_time(frame)
        if start is not None:
            if self._origin is None:
                self._origin = start
            gap = start - self._origin - self.samples_written
            if 0 < gap <= MAX_GAP_FILL_S * SAMPLE_RATE:
                self._write_pcm(bytes(gap * BYTES_PER_SAMPLE))
                self.gap_samples_filled += gap
            elif gap > 0:  # too long to fill: re-anchor the timeline after it
                self._origin += gap
        for mono in self._resampler.resample(frame):
            self._write_pcm(bytes(mono.planes[0])[: mono.samples * BYTES_PER_SAMPLE])
        self.frames += 1

    def _write_pcm(self, pcm: bytes) -> None:
        self._file.writeframes(pcm)
        self.samples_written += len(pcm) // BYTES_PER_SAMPLE

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._file.close()


class SpeakerSink:
    """The sound card's playback device (PyAV's ALSA output; no extra dependency)."""

    def __init__(self, device: str = "default", backend: str = "alsa") -> None:
        if backend not in av.formats_available:
            raise AudioDeviceUnavailable(f"this PyAV build has no {backend!r} device backend")
        try:
            self._container = av.open(device, format=backend, mode="w")
            self._stream = self._container.add_stream("pcm_s16le", rate=SAMPLE_RATE)
            self._stream.layout = "mono"
            self._container.start_encoding()  # opens the device now, not at the first frame
        except (OSError, av.FFmpegError) as exc:
            raise AudioDeviceUnavailable(f"{backend} playback device {device!r}: {exc}") from exc
        self._resampler = _mono_resampler()
        self._closed = False

    def write(self, frame: AudioFrame) -> None:
        if self._closed:
            return
        for mono in self._resampler.resample(frame):
            mono.pts = None
            for packet in self._stream.encode(mono):
                self._container.mux(packet)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._container.close()
