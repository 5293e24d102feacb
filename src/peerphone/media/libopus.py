"""libopus itself, through opuslib-next (a ctypes binding to the system's libopus0).

PyAV's Opus decoder cannot conceal a lost packet nor decode a packet's in-band FEC (an
empty packet is end-of-stream to it), and its encoder fixes FEC and the expected loss when
it opens. libopus can do all of it: `OpusDecoder.decode`, `.decode_fec` (the previous
packet, rebuilt from the LBRR data in this one) and `.conceal` (packet-loss concealment);
`OpusEncoder.expected_loss_pct` can change on every packet.

Debian's ``libopus0`` supplies the library (``apt-get install libopus0``); opuslib-next finds
it with ``ctypes.util.find_library``. Without it, `LibopusMissing` says so at the first use
instead of an ``AttributeError`` deep in ctypes.
"""

from __future__ import annotations

import ctypes.util
import functools
from types import ModuleType
from typing import Any

from peerphone.errors import DecodeError, LocalProtocolError, PeerphoneError

SAMPLE_RATE = 48_000
CHANNELS = 1
MAX_PACKET_SAMPLES = 5_760  # 120 ms at 48 kHz: the longest an Opus packet can hold
MAX_PACKET_BYTES = 1_275 * 3  # RFC 6716: a code 3 packet of up to 1275-byte frames


class LibopusMissing(PeerphoneError):
    """The system's libopus is not installed (Debian: ``apt-get install libopus0``)."""


@functools.cache
def _opuslib() -> ModuleType:
    if ctypes.util.find_library("opus") is None:
        raise LibopusMissing("libopus not found: install it (Debian: apt-get install libopus0)")
    import opuslib_next  # only once the library is known to be there

    module: ModuleType = opuslib_next
    return module


def _api() -> Any:
    return _opuslib().api


class OpusEncoder:
    """A mono 48 kHz libopus encoder for voice (``OPUS_APPLICATION_VOIP``)."""

    def __init__(self, bitrate_bps: int, complexity: int, fec: bool, dtx: bool = False) -> None:
        lib = _opuslib()
        self._encoder = lib.Encoder(SAMPLE_RATE, CHANNELS, lib.APPLICATION_VOIP)
        self._encoder.bitrate = bitrate_bps
        self._encoder.complexity = complexity
        self._encoder.vbr = 1
        self._encoder.vbr_constraint = 1  # a rate the relays' caps can count on
        self._encoder.signal = lib.SIGNAL_VOICE
        self._encoder.inband_fec = 1 if fec else 0
        # DTX: in a pause, a packet of one byte (not worth sending) and every 400 ms a
        # comfort-noise update; `OpusEncoderTrack` sends only the updates
        self._encoder.dtx = 1 if dtx else 0
        self._encoder.packet_loss_perc = 0
        self._expected_loss_pct = 0

    @property
    def expected_loss_pct(self) -> int:
        return self._expected_loss_pct

    @expected_loss_pct.setter
    def expected_loss_pct(self, pct: int) -> None:
        """How much loss the receiver sees: libopus sizes its FEC (and its prediction) to it."""
        pct = max(0, min(100, int(pct)))
        if pct != self._expected_loss_pct:
            self._encoder.packet_loss_perc = pct
            self._expected_loss_pct = pct

    @property
    def bitrate_bps(self) -> int:
        return int(self._encoder.bitrate)

    @bitrate_bps.setter
    def bitrate_bps(self, bps: int) -> None:
        self._encoder.bitrate = int(bps)

    def encode(self, pcm: bytes, samples: int) -> bytes:
        """One packet from exactly `samples` 16-bit mono samples (2.5 to 60 ms of them)."""
        if len(pcm) != samples * 2:
            raise LocalProtocolError(f"{len(pcm)} bytes of PCM for {samples} samples")
        return bytes(self._encoder.encode(pcm, samples))


class OpusDecoder:
    """A mono 48 kHz libopus decoder: decode, FEC-decode, conceal. Returns s16 PCM bytes.

    A packet from the network that libopus refuses raises `DecodeError` (never anything
    else), so a peer's garbage costs one frame, not the call.
    """

    def __init__(self) -> None:
        self._decoder = _opuslib().Decoder(SAMPLE_RATE, CHANNELS)
        self._opus_error = _opuslib().OpusError

    def packet_samples(self, packet: bytes) -> int:
        """How many samples (at 48 kHz) `packet` holds; DecodeError if it is not Opus."""
        if not 0 < len(packet) <= MAX_PACKET_BYTES:
            raise DecodeError(f"an Opus packet of {len(packet)} bytes")
        try:
            samples = int(
                _api().decoder.get_nb_samples(self._decoder.decoder_state, packet, len(packet))
            )
        except self._opus_error as exc:
            raise DecodeError(f"not an Opus packet: {exc}") from exc
        if not 0 < samples <= MAX_PACKET_SAMPLES:
            raise DecodeError(f"an Opus packet of {samples} samples")
        return samples

    def decode(self, packet: bytes) -> bytes:
        return self._run(packet, self.packet_samples(packet), fec=False)

    def decode_fec(self, next_packet: bytes, samples: int) -> bytes:
        """The `samples` before `next_packet`, from its in-band FEC (concealment if none)."""
        return self._run(next_packet, samples, fec=True)

    def conceal(self, samples: int) -> bytes:
        """`samples` of packet-loss concealment (comfort noise after a DTX packet)."""
        return self._run(b"", samples, fec=False)

    def _run(self, packet: bytes, samples: int, fec: bool) -> bytes:
        if not 0 < samples <= MAX_PACKET_SAMPLES or samples % 120:
            raise LocalProtocolError(f"cannot decode {samples} samples (2.5 ms steps)")
        try:
            pcm = bytes(self._decoder.decode(packet, samples, decode_fec=fec))
        except self._opus_error as exc:
            raise DecodeError(f"libopus refused the packet: {exc}") from exc
        if len(pcm) != samples * 2:  # libopus gives what the packet holds for a normal decode
            pcm = pcm[: samples * 2].ljust(samples * 2, b"\0")
        return pcm
