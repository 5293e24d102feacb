"""Where a call's outgoing audio comes from: silence, a tone, a WAV file, a test signal, a mic.

Every headless source is a live aiortc track of 48 kHz mono s16 frames released at real
time (`PacedAudioSource`); `OpusEncoderTrack` reads and encodes them. The microphone is
aiortc's ``MediaPlayer`` on an ALSA device, which fits as is (the device sets the pace).

aiortc's ``MediaPlayer`` is not used for WAV files: it ends its track at the end of the
file (the RTP sender then stops for good, while a call should go on in silence), it
decodes on a thread of its own per file, and it returns stereo that we would downmix.
"""

from __future__ import annotations

import array
import asyncio
import fractions
import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError
from av.audio.frame import AudioFrame

from peerphone.errors import LocalProtocolError, PeerphoneError

SAMPLE_RATE = 48_000
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
BYTES_PER_SAMPLE = 2  # s16 mono
DEFAULT_FRAME_MS = 20
MAX_CATCH_UP_S = 0.2  # a consumer further behind than this skips ahead instead of bursting
MAX_WAV_SECONDS = 3600  # a WAV source refuses longer files (it decodes lazily, but bounds)
FULL_SCALE = 32767


class AudioFileError(PeerphoneError):
    """An audio file to play cannot be used (missing, not audio, too long): bad input, not
    a bug; the message names the file."""


class AudioDeviceUnavailable(PeerphoneError):
    """No sound card here (or the PyAV build lacks the backend): use a headless source."""


class PacedAudioSource(MediaStreamTrack):
    """A live audio track: 48 kHz mono s16 frames of `frame_ms`, released in real time.

    Subclasses render samples; this class keeps the pace on `clock` (monotonic seconds).
    """

    kind = "audio"

    def __init__(
        self, *, frame_ms: int = DEFAULT_FRAME_MS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        if frame_ms <= 0 or SAMPLE_RATE * frame_ms % 1000:
            raise LocalProtocolError(f"frame_ms {frame_ms} is not a whole number of samples")
        self.frame_samples = SAMPLE_RATE * frame_ms // 1000
        self._clock = clock
        self._anchor: float | None = None  # clock time of sample 0 (moved on catch-up)
        self._samples = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = self._clock()
        if self._anchor is None:
            self._anchor = now
        due = self._anchor + self._samples / SAMPLE_RATE
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > MAX_CATCH_UP_S:
            self._anchor = now - self._samples / SAMPLE_RATE
        pcm = self.render(self.frame_samples)
        frame = AudioFrame(format="s16", layout="mono", samples=self.frame_samples)
        frame.planes[0].update(pcm)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._samples
        frame.time_base = TIME_BASE
        self._samples += self.frame_samples
        return frame

    def render(self, samples: int) -> bytes:
        """The next `samples` samples as s16 native-endian bytes."""
        raise NotImplementedError


class SilenceSource(PacedAudioSource):
    """Digital silence (what a muted or held call would send, if it sent anything)."""

    def render(self, samples: int) -> bytes:
        return bytes(samples * BYTES_PER_SAMPLE)


class ToneSource(PacedAudioSource):
    """A sine tone of a whole number of hertz (so one second of it repeats seamlessly)."""

    def __init__(
        self,
        frequency_hz: int = 440,
        amplitude: float = 0.3,
        *,
        frame_ms: int = DEFAULT_FRAME_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(frame_ms=frame_ms, clock=clock)
        if not 0 < frequency_hz < SAMPLE_RATE // 2:
            raise LocalProtocolError(f"frequency_hz {frequency_hz} outside 1..{SAMPLE_RATE // 2}")
        if not 0.0 <= amplitude <= 1.0:
            raise LocalProtocolError(f"amplitude {amplitude} outside 0..1")
        step = 2 * math.pi * frequency_hz / SAMPLE_RATE
        second = array.array(
            "h", (round(amplitude * FULL_SCALE * math.sin(step * i)) for i in range(SAMPLE_RATE))
        )
        self._period = second.tobytes()
        self._offset = 0  # bytes into the one-second period

    def render(self, samples: int) -> bytes:
        want = samples * BYTES_PER_SAMPLE
        out = bytearray()
        while len(out) < want:
            chunk = self._period[self._offset : self._offset + want - len(out)]
            out += chunk
            self._offset = (self._offset + len(chunk)) % len(self._period)
        return bytes(out)


def reference_signal(seed: int, seconds: float, sample_rate: int = SAMPLE_RATE) -> array.array[int]:
    """A voice-band tone gliding to a random pitch and level every 80 ms (seeded).

    Its pitch path never repeats, so a recording of it aligns with the original without
    ambiguity; its content (300-3400 Hz, smooth, phase-continuous) suits a voice codec.
    The same seed at another `sample_rate` gives the same waveform sampled differently.
    """
    rng = random.Random(seed)
    segment_s = 0.08
    count = math.ceil(seconds / segment_s) + 1
    pitches = [rng.uniform(300.0, 3400.0) for _ in range(count)]
    levels = [rng.uniform(0.2, 0.5) for _ in range(count)]
    out = array.array("h")
    phase = 0.0
    for i in range(round(seconds * sample_rate)):
        position = i / sample_rate / segment_s
        k = int(position)
        into = position - k
        pitch = pitches[k] + (pitches[k + 1] - pitches[k]) * into
        level = levels[k] + (levels[k + 1] - levels[k]) * into
        phase += 2 * math.pi * pitch / sample_rate
        out.append(round(level * FULL_SCALE * math.sin(phase)))
    return out


class ReferenceSignalSource(PacedAudioSource):
    """`reference_signal` as a live source, then silence."""

    def __init__(
        self,
        seed: int = 1,
        seconds: float = 10.0,
        *,
        frame_ms: int = DEFAULT_FRAME_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(frame_ms=frame_ms, clock=clock)
        self._pcm = reference_signal(seed, seconds).tobytes()  # native-endian, like av's s16
        self._offset = 0

    def render(self, samples: int) -> bytes:
        want = samples * BYTES_PER_SAMPLE
        chunk = self._pcm[self._offset : self._offset + want]
        self._offset += len(chunk)
        return chunk + bytes(want - len(chunk))


class WavSource(PacedAudioSource):
    """A sound file (WAV, any rate, channels and sample format) as 48 kHz mono; then silence.

    With ``loop=True`` the file starts over instead. Decoded lazily, a few frames ahead.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        loop: bool = False,
        frame_ms: int = DEFAULT_FRAME_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(frame_ms=frame_ms, clock=clock)
        self.path = Path(path)
        self.loop = loop
        self.finished = False
        try:
            self._container = av.open(str(self.path), mode="r")
        except (OSError, av.FFmpegError) as exc:
            raise AudioFileError(f"cannot open {self.path}: {exc}") from exc
        streams = self._container.streams.audio
        if not streams:
            self._container.close()
            raise AudioFileError(f"{self.path} has no audio stream")
        duration, time_base = streams[0].duration, streams[0].time_base
        if (
            duration is not None
            and time_base is not None
            and duration * time_base > MAX_WAV_SECONDS
        ):
            self._container.close()
            raise AudioFileError(f"{self.path} is longer than {MAX_WAV_SECONDS} s")
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._decoded = self._decode()
        self._buffer = bytearray()

    def _decode(self) -> Iterator[bytes]:
        while True:
            for frame in self._container.decode(audio=0):
                yield from _pcm_of(self._resampler.resample(frame))
            yield from _pcm_of(self._resampler.resample(None))
            if not self.loop:
                return
            self._container.seek(0)
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

    def render(self, samples: int) -> bytes:
        want = samples * BYTES_PER_SAMPLE
        while len(self._buffer) < want and not self.finished:
            chunk = next(self._decoded, None)
            if chunk is None:
                self.finished = True
                self._container.close()
            else:
                self._buffer += chunk
        out = bytes(self._buffer[:want])
        del self._buffer[:want]
        return out + bytes(want - len(out))

    def stop(self) -> None:
        super().stop()
        if not self.finished:
            self.finished = True
            self._container.close()


def _pcm_of(frames: list[AudioFrame]) -> Iterator[bytes]:
    for frame in frames:
        # planes may be padded past the last sample
        yield bytes(frame.planes[0])[: frame.samples * BYTES_PER_SAMPLE]


def microphone(device: str = "default", backend: str = "alsa") -> MediaStreamTrack:
    """The sound card's capture device as a track (aiortc's MediaPlayer over ALSA).

    Raises `AudioDeviceUnavailable` when there is none: callers fall back to a headless
    source. No extra dependency: PyAV's wheels include the ALSA device backend.
    """
    if backend not in av.formats_available:
        raise AudioDeviceUnavailable(f"this PyAV build has no {backend!r} device backend")
    try:
        player = MediaPlayer(device, format=backend)
    except (OSError, av.FFmpegError) as exc:
        raise AudioDeviceUnavailable(f"{backend} capture device {device!r}: {exc}") from exc
    if player.audio is None:
        raise AudioDeviceUnavailable(f"{backend} device {device!r} has no audio input")
    return player.audio
