"""Per-call statistics from aiortc's ``getStats()`` report (RTCP-derived), without I/O.

`sample_report` reduces one report to the counters we use; `call_stats` turns two
samples into the numbers a user sees (interval bitrates, loss in the interval).

Units, from aiortc: jitter is in RTP clock units (48 kHz for Opus); the fraction lost in
an RTCP receiver report is 8-bit fixed point (n/256); transport bytes are the UDP
payloads of DTLS, SRTP and SRTCP (STUN consent checks are not counted).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCInboundRtpStreamStats,
    RTCOutboundRtpStreamStats,
    RTCRemoteInboundRtpStreamStats,
    RTCTransportStats,
)

RTP_CLOCK_HZ = 48_000  # Opus


@dataclass(frozen=True, slots=True)
class StatsSample:
    """The counters of one ``getStats()`` report, taken at `at` (seconds, monotonic)."""

    at: float
    bytes_sent: int = 0  # transport: UDP payloads sent (DTLS + SRTP + SRTCP)
    bytes_received: int = 0
    rtp_packets_sent: int = 0
    rtp_payload_bytes_sent: int = 0  # Opus bytes only
    rtp_packets_received: int = 0
    packets_lost: int = 0  # inbound, cumulative, as our receiver counts them
    jitter_rtp: int | None = None  # inbound jitter, RTP clock units
    rtt_s: float | None = None  # from the peer's receiver reports about our stream
    remote_packets_lost: int | None = None  # the peer's count of our packets lost
    remote_fraction_lost: float | None = None  # the peer's last report, 0..1
    remote_jitter_rtp: int | None = None


def sample_report(report: Mapping[str, Any], at: float) -> StatsSample:
    """Reduce an aiortc ``RTCStatsReport`` (one audio transceiver) to a `StatsSample`."""
    fields: dict[str, Any] = {"at": at}
    transports: dict[str, RTCTransportStats] = {}
    for key in sorted(report):
        stats = report[key]
        if isinstance(stats, RTCTransportStats):
            transports[stats.id] = stats  # sender and receiver report the same transport
        elif isinstance(stats, RTCOutboundRtpStreamStats):
            fields["rtp_packets_sent"] = stats.packetsSent
            fields["rtp_payload_bytes_sent"] = stats.bytesSent
        elif isinstance(stats, RTCInboundRtpStreamStats):
            fields["rtp_packets_received"] = stats.packetsReceived
            fields["packets_lost"] = max(0, stats.packetsLost)
            fields["jitter_rtp"] = stats.jitter
        elif isinstance(stats, RTCRemoteInboundRtpStreamStats):
            fields["rtt_s"] = stats.roundTripTime
            fields["remote_packets_lost"] = max(0, stats.packetsLost)
            fields["remote_fraction_lost"] = stats.fractionLost / 256
            fields["remote_jitter_rtp"] = stats.jitter
    fields["bytes_sent"] = sum(t.bytesSent for t in transports.values())
    fields["bytes_received"] = sum(t.bytesReceived for t in transports.values())
    return StatsSample(**fields)


def _ms(value_rtp: int | None) -> float | None:
    return None if value_rtp is None else round(value_rtp * 1000 / RTP_CLOCK_HZ, 2)


def _kbps(byte_delta: int, seconds: float) -> float | None:
    return round(byte_delta * 8 / seconds / 1000, 2) if seconds > 0 else None


def call_stats(previous: StatsSample | None, current: StatsSample) -> dict[str, Any]:
    """The interval numbers between two samples (since the first if `previous` is None).

    ``loss`` is the fraction of the packets expected from the peer in the interval that
    never came; ``bitrate_kbps`` is transport bytes (UDP payload) per direction.
    """
    base = previous or StatsSample(at=current.at)
    seconds = current.at - base.at
    received = current.rtp_packets_received - base.rtp_packets_received
    lost = max(0, current.packets_lost - base.packets_lost)
    expected = received + lost
    return {
        "rtt_ms": None if current.rtt_s is None else round(current.rtt_s * 1000, 2),
        "jitter_ms": _ms(current.jitter_rtp),
        "loss": round(lost / expected, 4) if expected > 0 else 0.0,
        "packets_lost": current.packets_lost,
        "remote_loss": current.remote_fraction_lost,
        "remote_packets_lost": current.remote_packets_lost,
        "remote_jitter_ms": _ms(current.remote_jitter_rtp),
        "bitrate_kbps": {
            "sent": _kbps(current.bytes_sent - base.bytes_sent, seconds),
            "received": _kbps(current.bytes_received - base.bytes_received, seconds),
        },
        "interval_s": round(seconds, 3),
        "bytes_sent": current.bytes_sent,
        "bytes_received": current.bytes_received,
        "rtp_packets_sent": current.rtp_packets_sent,
        "rtp_payload_bytes_sent": current.rtp_payload_bytes_sent,
        "rtp_packets_received": current.rtp_packets_received,
    }


def loss_out(sample: StatsSample, packets_sent: int) -> float | None:
    """Share of our packets lost on the way to the peer, whole call; None before it reports.

    From the peer's RTCP receiver reports. A node peer counts a packet that came only
    when asked for again as lost (media/aiortc_internals.py: the link lost it); a browser
    does not ask, so its count is the link's too.
    """
    if sample.remote_packets_lost is None or packets_sent <= 0:
        return None
    return round(min(1.0, sample.remote_packets_lost / packets_sent), 4)


# In-band FEC is costly at a voice bitrate (28 kbit/s, 40 ms packets, measured with PESQ-WB
# on the test speech, no loss): expected loss 0 % 3.67, 1 % 3.27, 10 % 2.89, 20 % 2.30;
# and with 10 % random loss and no retransmission it lifts 1.61 only to 1.85. So FEC is for
# loss that retransmission leaves, and only from a few percent (docs/decisions/0017).
FEC_FROM_RESIDUAL = 0.05  # below this share of unrepaired loss, no FEC
FEC_MAX_PCT = 10  # more costs the clean packets more than it repairs (20 % loss: 10 > 20)
REPAIR_WINDOW = 10  # samples (seconds) over which loss and retransmissions are compared


@dataclass(slots=True)
class RepairWindow:
    """Over the last `size` samples: the share of our packets the peer asked for again
    (NACK), and the loss it reported that retransmission did not repair.

    One second holds 25 packets: per second, one loss is 4 % and a receiver report's
    interval differs from the NACKs' second, so the shares would jump about; over ten
    seconds they hold still (and so do the bitrate and FEC they steer).
    """

    size: int = REPAIR_WINDOW
    _samples: deque[tuple[int, int, int | None]] = field(default_factory=deque)

    def add(self, packets_sent: int, asked_again: int, remote_lost: int | None) -> None:
        """Cumulative counts now: packets we sent, distinct ones asked for again, and the
        peer's count of our packets lost (None before its first report)."""
        self._samples.append((packets_sent, asked_again, remote_lost))
        while len(self._samples) > self.size + 1:
            self._samples.popleft()

    def _deltas(self) -> tuple[int, int, int | None]:
        if len(self._samples) < 2:
            return 0, 0, None
        (sent0, asked0, lost0), (sent1, asked1, lost1) = self._samples[0], self._samples[-1]
        lost = None if lost0 is None or lost1 is None else max(0, lost1 - lost0)
        return sent1 - sent0, asked1 - asked0, lost

    def asked_again_share(self) -> float | None:
        sent, asked, _ = self._deltas()
        return min(1.0, asked / sent) if sent > 0 else None

    def residual_loss(self) -> float | None:
        """The share of our packets lost and never asked for again (a peer that does not
        NACK, a round trip too long for it, a retransmission lost too)."""
        sent, asked, lost = self._deltas()
        if sent <= 0 or lost is None:
            return None
        return min(1.0, max(0, lost - asked) / sent)

    def fec_loss_pct(self) -> int | None:
        """The expected loss to give the encoder for FEC, None while unknown."""
        residual = self.residual_loss()
        if residual is None:
            return None
        return 0 if residual < FEC_FROM_RESIDUAL else min(FEC_MAX_PCT, round(residual * 100))


# E-model (ITU-T G.107), simplified: the codec's own impairment and its robustness to loss
# with concealment, as commonly used for Opus in voice monitoring. An estimate for the
# call view, not a measurement: benchmarks/bench_voice.py prints it beside PESQ.
E_MODEL_R0 = 93.2
OPUS_IE = 10.0
OPUS_BPL = 20.0
CODEC_DELAY_MS = 6.5  # Opus' look-ahead


def mos_estimate(
    rtt_ms: float | None, jitter_buffer_ms: float | None, packet_ms: float, concealed: float
) -> float:
    """Estimated MOS (1..4.5) from mouth-to-ear delay and the share of concealed audio."""
    delay = (rtt_ms or 0.0) / 2 + (jitter_buffer_ms or 0.0) + packet_ms + CODEC_DELAY_MS
    delay_impairment = 0.024 * delay + (0.11 * (delay - 177.3) if delay > 177.3 else 0.0)
    loss_pct = max(0.0, min(100.0, concealed * 100))
    loss_impairment = OPUS_IE + (95 - OPUS_IE) * loss_pct / (loss_pct + OPUS_BPL)
    r = E_MODEL_R0 - delay_impairment - loss_impairment
    if r <= 0:
        return 1.0
    mos = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
    return round(max(1.0, min(4.5, mos)), 2)
