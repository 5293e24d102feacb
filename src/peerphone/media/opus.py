"""Voice-sized Opus: our own encoder in front of aiortc, which sends what it is given.

aiortc's own Opus encoder (``aiortc/codecs/opus.py``) is hard-wired to 96 kbit/s stereo,
about 133 kbit/s on the wire. Instead of patching it, `OpusEncoderTrack` encodes itself
(libopus through `peerphone.media.libopus`: mono, 24 kbit/s in 40 ms packets, in-band FEC
sized to the loss the receiver reports) and hands aiortc finished ``av.Packet``s. aiortc's
RTP sender passes packets through untouched (``Encoder.pack``: it only converts ``pts`` to
the 48 kHz RTP clock) — the same path its ``MediaPlayer(decode=False)`` uses to relay
encoded media — so no private attribute and no global patch is involved.

tests/loopback/test_media.py checks that the RTP payload bytes aiortc reports as sent equal the
bytes this encoder produced, so an aiortc release that re-encoded or dropped packets would
fail the suite. See docs/decisions/0017-voice-under-loss.md for the numbers.
"""

from __future__ import annotations

import asyncio
import fractions
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av.audio.frame import AudioFrame
from av.packet import Packet

from peerphone.errors import LocalProtocolError
from peerphone.media.libopus import OpusEncoder

SAMPLE_RATE = 48_000  # Opus' RTP clock is always 48 kHz (RFC 7587)
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
# 40 ms packets of 28 kbit/s Opus: ~46 kbit/s per direction as whole IPv6 packets, the
# worst case (decision 0017; 20 ms packets left room only for 12 kbit/s, decision 0016,
# which PESQ scores ~0.8 lower). Retransmissions under loss are paid for by lowering the
# rate (`OpusEncoderTrack.retransmission_share`).
DEFAULT_BITRATE_BPS = 28_000
MAX_RETRANSMISSION_CUT = 0.4  # never below 60 % of the rate to pay for retransmissions
DEFAULT_FRAME_MS = 40
MIN_BITRATE_BPS = 6_000  # libopus' floor
MAX_BITRATE_BPS = 128_000  # far above voice; 12-40 kbit/s is the intended band
FRAME_DURATIONS_MS = (10, 20, 40, 60)  # what a packet may hold; 20 ms is WebRTC's norm
DTX_FRAME_MAX_BYTES = 2  # what libopus emits for a frame of a pause under DTX (not sent)
MAX_PENDING_PACKETS = 16  # encoded, not yet taken by the sender (one input frame -> ~1)


@dataclass(frozen=True, slots=True)
class OpusSettings:
    """How calls encode voice: mono Opus, `bitrate_bps` on average, `frame_ms` per packet.

    ``fec`` lets libopus add in-band forward error correction, sized to the loss the
    receiver reports (`OpusEncoderTrack.expected_loss_pct`; none while nothing is lost).
    Our receiver and browsers decode it.
    """

    bitrate_bps: int = DEFAULT_BITRATE_BPS
    frame_ms: int = DEFAULT_FRAME_MS
    complexity: int = 10  # libopus 0..10; 10 costs ~0.3 ms of CPU per 40 ms packet
    fec: bool = True
    # discontinuous transmission: in pauses of speech, one packet per 400 ms instead of 25
    # per second (a listener's side of a call is mostly pause); PESQ of the test speech is
    # unchanged (3.669 -> 3.666), see docs/decisions/0017
    dtx: bool = True
    expected_loss_pct: int = 0  # the starting point; the receiver's reports move it

    def __post_init__(self) -> None:
        if not MIN_BITRATE_BPS <= self.bitrate_bps <= MAX_BITRATE_BPS:
            raise LocalProtocolError(
                f"bitrate_bps {self.bitrate_bps} outside {MIN_BITRATE_BPS}..{MAX_BITRATE_BPS}"
            )
        if self.frame_ms not in FRAME_DURATIONS_MS:
            raise LocalProtocolError(f"frame_ms {self.frame_ms} not in {FRAME_DURATIONS_MS}")
        if not 0 <= self.complexity <= 10:
            raise LocalProtocolError(f"complexity {self.complexity} outside 0..10")
        if not 0 <= self.expected_loss_pct <= 100:
            raise LocalProtocolError(f"expected_loss_pct {self.expected_loss_pct} outside 0..100")

    @property
    def samples_per_packet(self) -> int:
        return SAMPLE_RATE * self.frame_ms // 1000

    def fmtp(self) -> dict[str, str]:
        """The Opus format parameters (RFC 7587 §6.1) that describe what we send and want.

        aiortc ignores a peer's fmtp for Opus; they are for peers that honour them.
        ``useinbandfec=1``: our receive path decodes FEC (media/playout.py).
        """
        return {
            "minptime": "10",
            "ptime": str(self.frame_ms),
            "stereo": "0",
            "sprop-stereo": "0",
            "maxaveragebitrate": str(self.bitrate_bps),
            "useinbandfec": "1",
        }


def make_encoder(settings: OpusSettings) -> OpusEncoder:
    """A libopus encoder for 48 kHz mono s16 frames of ``settings.samples_per_packet``."""
    encoder = OpusEncoder(settings.bitrate_bps, settings.complexity, settings.fec, settings.dtx)
    if settings.fec:
        encoder.expected_loss_pct = settings.expected_loss_pct
    return encoder


def make_mono_resampler(frame_samples: int) -> av.AudioResampler:
    """Any audio frame in, 48 kHz mono s16 frames of exactly `frame_samples` out."""
    return av.AudioResampler(
        format="s16", layout="mono", rate=SAMPLE_RATE, frame_size=frame_samples
    )


class OpusEncoderTrack(MediaStreamTrack):
    """The track given to aiortc: reads raw audio from `source`, returns Opus packets.

    `source` is any audio track (our sources, aiortc's MediaPlayer, a microphone); its
    frames are resampled to 48 kHz mono. While `paused`, frames are still read (the source
    keeps its pace) but nothing is encoded or returned, so aiortc sends no RTP at all; the
    RTP timestamps jump by the paused time on resume, as RFC 3550 wants.
    """

    kind = "audio"

    def __init__(self, source: MediaStreamTrack, settings: OpusSettings | None = None) -> None:
        super().__init__()
        if source.kind != "audio":
            raise LocalProtocolError(f"source track is {source.kind!r}, not audio")
        self.settings = settings or OpusSettings()
        self.source = source
        self.paused = False
        self.packets_encoded = 0
        self.packets_not_sent = 0  # DTX: pause frames of a byte or two
        self.bytes_encoded = 0
        self._encoder = make_encoder(self.settings)
        self._resampler = make_mono_resampler(self.settings.samples_per_packet)
        self._samples_read = 0  # 48 kHz samples taken from the source, paused or not
        self._pending: deque[Packet[Any]] = deque()
        self._resumed = asyncio.Event()
        self._resumed.set()

    def replace_source(self, source: MediaStreamTrack) -> None:
        """Read from another source from the next frame on (the old one is not stopped)."""
        if source.kind != "audio":
            raise LocalProtocolError(f"source track is {source.kind!r}, not audio")
        self.source = source

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    async def recv(self) -> Packet[Any]:
        while not self._pending:
            if self.readyState != "live":
                raise MediaStreamError
            frame = await self.source.recv()
            if not isinstance(frame, AudioFrame):
                raise MediaStreamError(f"source returned {type(frame).__name__}, not audio")
            if self.paused:
                await asyncio.sleep(0)  # a source that never waits must not starve the loop
            for mono in self._resampler.resample(frame):
                start = self._samples_read
                self._samples_read += mono.samples
                if self.paused:
                    continue
                pcm = bytes(mono.planes[0])[: mono.samples * 2]
                encoded = self._encoder.encode(pcm, mono.samples)
                if self.settings.dtx and len(encoded) <= DTX_FRAME_MAX_BYTES:
                    self.packets_not_sent += 1  # the receiver hears the timestamps jump
                    continue
                self._queue_packet(Packet(encoded), start)
        return self._pending.popleft()

    @property
    def expected_loss_pct(self) -> int:
        return self._encoder.expected_loss_pct

    @expected_loss_pct.setter
    def expected_loss_pct(self, pct: int) -> None:
        """The loss the receiver reports: libopus sizes its FEC to it (if `settings.fec`)."""
        if self.settings.fec:
            self._encoder.expected_loss_pct = pct

    def retransmission_share(self, share: float) -> None:
        """The peer asks for this share of our packets again: cut the rate to pay for it."""
        cut = min(MAX_RETRANSMISSION_CUT, max(0.0, share) * 1.2)
        target = max(MIN_BITRATE_BPS, round(self.settings.bitrate_bps * (1 - cut)))
        if target != self._encoder.bitrate_bps:
            self._encoder.bitrate_bps = target

    @property
    def bitrate_bps(self) -> int:
        return self._encoder.bitrate_bps

    def _queue_packet(self, packet: Packet[Any], pts: int) -> None:
        packet.pts = pts  # sample time: aiortc turns it into the RTP timestamp
        packet.time_base = TIME_BASE
        self.packets_encoded += 1
        self.bytes_encoded += packet.size
        if len(self._pending) >= MAX_PENDING_PACKETS:
            self._pending.popleft()  # the sender stalled: old voice is worth less than new
        self._pending.append(packet)

    def stop(self) -> None:
        super().stop()
        self.source.stop()


_RTPMAP_OPUS = re.compile(r"^a=rtpmap:(\d+) opus/48000(?:/2)?\r?$", re.IGNORECASE | re.MULTILINE)


def with_opus_fmtp(sdp: str, settings: OpusSettings) -> str:
    """`sdp` with our Opus ``a=fmtp`` line for every Opus payload type (replacing any).

    Used on our own offer or answer before ``setLocalDescription``; aiortc keeps the line
    when it re-serialises the description, so the signed SDP carries it.
    """
    params = ";".join(f"{key}={value}" for key, value in settings.fmtp().items())
    newline = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(newline)
    payload_types = {m.group(1) for m in _RTPMAP_OPUS.finditer(sdp)}
    out: list[str] = []
    for line in lines:
        if any(line.startswith(f"a=fmtp:{pt} ") for pt in payload_types):
            continue  # replaced below
        out.append(line)
        match = _RTPMAP_OPUS.match(line)
        if match is not None:
            out.append(f"a=fmtp:{match.group(1)} {params}")
    return newline.join(out)
