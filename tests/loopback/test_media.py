"""Calls' audio (peerphone.media): Opus settings, SDP, sources and sinks, and real calls.

The real calls run two `tests.support.media_probe` processes, each in its own network
namespace of the NAT lab (tests/support/netlab.py), over a bridge: real UDP, real ICE, DTLS and
SRTP, no loopback (aioice drops 127.0.0.1), nothing shared with the host's network. Bytes
on the wire are counted by nftables in each namespace: IP packets of every UDP datagram
the probe sends or receives (STUN, DTLS, SRTP, SRTCP), reported as IP-level and as UDP
payload (IP bytes minus 28 bytes of IPv4 and UDP header per packet; IPv6 is off there).
The voice budget is checked in its worst case: the same packets with IPv6's 20 bytes more.
"""

from __future__ import annotations

import array
import asyncio
import fractions
import json
import re
import shutil
import subprocess
import wave
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from av.audio.frame import AudioFrame
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from peerphone.errors import DecodeError, LocalProtocolError
from peerphone.media import aiortc_internals
from peerphone.media.call import CallConfig, IceServer, MediaSession, MediaState
from peerphone.media.opus import OpusEncoderTrack, OpusSettings, with_opus_fmtp
from peerphone.media.sdp import (
    MAX_SDP_CHARS,
    certificate_fingerprint,
    certificate_matches,
    sdp_candidates,
    sdp_fingerprints,
    without_rtp_header_extensions,
)
from peerphone.media.sinks import MAX_GAP_FILL_S, SpeakerSink, WavRecorder
from peerphone.media.sources import (
    MAX_CATCH_UP_S,
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
from peerphone.media.stats import StatsSample, call_stats
from tests.support.audio import (
    correlation,
    read_wav,
    write_wav,
)
from tests.support.lab_probe import LabProbe, WireRate, wire_rate
from tests.support.media_probe import ProbeClient
from tests.support.netlab import Host, NetLab, require_available

RATE = 48_000
WIRE_LIMIT_KBPS = 48.0  # the budget per direction for a voice call
MIN_CORRELATION = 0.9

# -- helpers ------------------------------------------------------------------------------


def as_array(samples: array.array[int]) -> npt.NDArray[np.float64]:
    return np.array(samples, dtype=np.float64)


def frame_samples(frame: AudioFrame) -> npt.NDArray[np.float64]:
    return frame.to_ndarray().astype(np.float64).reshape(-1)


class UnpacedClock:
    """A clock that runs a second ahead at every reading: sources never wait on it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def self_signed(common_name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


SAMPLE_SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "a=fingerprint:SHA-256 ab:cd:EF:01\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 96 0\r\n"
    "a=rtpmap:96 opus/48000/2\r\n"
    "a=fmtp:96 useinbandfec=1\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=candidate:1 1 udp 2130706431 10.0.0.1 4000 typ host\r\n"
    "a=candidate:2 1 udp 16777215 203.0.113.9 5000 typ relay raddr 0.0.0.0 rport 0\r\n"
    "a=fingerprint:sha-256 AB:CD:EF:01\r\n"
    "a=fingerprint:sha-384 01:02\r\n"
)


# -- Opus settings, fmtp and SDP ----------------------------------------------------------


def test_opus_settings_are_checked() -> None:
    assert OpusSettings().bitrate_bps == 28_000
    assert OpusSettings().samples_per_packet == 1920  # 40 ms packets (decision 0017)
    assert OpusSettings(frame_ms=20).samples_per_packet == 960
    for bad in (
        {"bitrate_bps": 5_000},
        {"bitrate_bps": 200_000},
        {"frame_ms": 25},
        {"complexity": 11},
        {"expected_loss_pct": -1},
    ):
        with pytest.raises(LocalProtocolError):
            OpusSettings(**bad)  # type: ignore[arg-type]


def test_fmtp_replaces_the_opus_line_only() -> None:
    munged = with_opus_fmtp(SAMPLE_SDP, OpusSettings(bitrate_bps=24_000, frame_ms=20, fec=False))
    lines = munged.split("\r\n")
    fmtp = [line for line in lines if line.startswith("a=fmtp:")]
    assert fmtp == [
        "a=fmtp:96 minptime=10;ptime=20;stereo=0;sprop-stereo=0;"
        "maxaveragebitrate=24000;useinbandfec=1"
    ]
    assert lines.index(fmtp[0]) == lines.index("a=rtpmap:96 opus/48000/2") + 1
    assert "a=rtpmap:0 PCMU/8000" in lines
    lf = with_opus_fmtp(SAMPLE_SDP.replace("\r\n", "\n"), OpusSettings())
    assert "\r" not in lf and "maxaveragebitrate=28000;useinbandfec=1" in lf and "ptime=40" in lf


def test_rtp_header_extensions_are_left_out_of_our_descriptions() -> None:
    sdp = SAMPLE_SDP.replace(
        "a=rtpmap:0 PCMU/8000\r\n",
        "a=rtpmap:0 PCMU/8000\r\na=extmap-allow-mixed\r\n"
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
        "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n",
    )
    trimmed = without_rtp_header_extensions(sdp)
    assert "extmap" not in trimmed
    assert trimmed == SAMPLE_SDP  # nothing else touched, line endings kept
    lf = without_rtp_header_extensions(sdp.replace("\r\n", "\n"))
    assert lf == SAMPLE_SDP.replace("\r\n", "\n")


def test_sdp_fingerprints_normalised_and_required() -> None:
    assert sdp_fingerprints(SAMPLE_SDP) == ["sha-256 AB:CD:EF:01", "sha-384 01:02"]
    with pytest.raises(DecodeError):
        sdp_fingerprints("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\n")
    with pytest.raises(DecodeError):
        sdp_fingerprints(SAMPLE_SDP + "a=x\r\n" * MAX_SDP_CHARS)
    with pytest.raises(DecodeError):
        sdp_fingerprints("a=fingerprint:sha-256 not-hex\r\n")


def test_certificate_matches_every_known_algorithm() -> None:
    cert, other = self_signed("a"), self_signed("b")
    fp256 = certificate_fingerprint(cert)
    fp512 = certificate_fingerprint(cert, "SHA-512")
    assert re.fullmatch(r"sha-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}", fp256)
    assert certificate_matches(cert, [fp256, fp512])
    assert certificate_matches(cert, [fp256, "md5 00:11"])  # unknown algorithm: skipped
    assert not certificate_matches(cert, [fp256, certificate_fingerprint(other, "sha-512")])
    assert not certificate_matches(cert, ["md5 00:11"])  # nothing checkable
    assert not certificate_matches(other, [fp256])
    with pytest.raises(DecodeError):
        certificate_fingerprint(cert, "md5")


def test_sdp_candidates() -> None:
    got = sdp_candidates(SAMPLE_SDP)
    assert [(c.ip, c.port, c.type) for c in got] == [
        ("10.0.0.1", 4000, "host"),
        ("203.0.113.9", 5000, "relay"),
    ]
    with pytest.raises(DecodeError):
        sdp_candidates("a=candidate:1 1 udp 1 10.0.0.1 port typ host\r\n")


def test_ice_servers_are_checked() -> None:
    IceServer("stun:198.51.100.1:3478")
    IceServer("turn:198.51.100.1?transport=tcp", "u", "p")
    config = CallConfig(ice_servers=(IceServer("turns:relay.example", "u", "p"),), force_relay=True)
    rtc = config.rtc_configuration()
    assert rtc.iceServers is not None and rtc.iceServers[0].username == "u"
    assert rtc.iceTransportPolicy.value == "relay"
    assert CallConfig().rtc_configuration().iceServers == []  # never aiortc's public STUN
    for bad in ("http://x", "stun:", "turn:h:1?transport=sctp", "stun:h:1 2"):
        with pytest.raises(LocalProtocolError):
            IceServer(bad)
    with pytest.raises(LocalProtocolError):
        IceServer("turn:198.51.100.1")  # no credentials


# -- sources and sinks --------------------------------------------------------------------


async def take(track: PacedAudioSource, count: int) -> list[AudioFrame]:
    return [await track.recv() for _ in range(count)]


def test_tone_source_frames() -> None:
    frames = asyncio.run(take(ToneSource(1000, 0.5, clock=UnpacedClock()), 50))
    assert {(f.samples, f.sample_rate, f.layout.name, f.format.name) for f in frames} == {
        (960, RATE, "mono", "s16")
    }
    assert [f.pts for f in frames[:3]] == [0, 960, 1920]
    signal = np.concatenate([frame_samples(f) for f in frames])
    crossings = int(np.count_nonzero(np.diff(np.signbit(signal))))
    assert crossings == pytest.approx(2 * 1000, abs=2)  # one second of 1 kHz
    assert np.max(np.abs(signal)) == pytest.approx(0.5 * 32767, rel=0.01)
    silence = asyncio.run(take(SilenceSource(clock=UnpacedClock()), 3))
    assert not any(np.any(frame_samples(f)) for f in silence)


def test_paced_source_keeps_real_time_and_skips_a_backlog() -> None:
    times = iter([0.0, 0.0, 0.02, 5.0, 5.0])

    class Clock:
        def __call__(self) -> float:
            return next(times)

    async def scenario() -> list[int | None]:
        source = SilenceSource(clock=Clock())
        pts = []
        for _ in range(4):
            pts.append((await source.recv()).pts)
        # after the 5 s stall it re-anchored: the next frame is due 20 ms after 5.0
        assert source._anchor == pytest.approx(5.0 - 3 * 0.02)
        return pts

    assert asyncio.run(scenario()) == [0, 960, 1920, 2880]
    assert MAX_CATCH_UP_S < 1.0


def test_wav_source_resamples_any_file_to_48k_mono(tmp_path: Path) -> None:
    original = reference_signal(5, 0.5, sample_rate=16_000)
    path = tmp_path / "in.wav"
    write_wav(path, original, 16_000, channels=2)

    async def scenario() -> tuple[list[AudioFrame], bool]:
        source = WavSource(path, clock=UnpacedClock())
        frames = await take(source, 30)  # 0.6 s: the file, then silence
        return frames, source.finished

    frames, finished = asyncio.run(scenario())
    assert finished
    assert {(f.samples, f.sample_rate, f.layout.name) for f in frames} == {(960, RATE, "mono")}
    played = np.concatenate([frame_samples(f) for f in frames])
    assert not np.any(played[int(0.52 * RATE) :])  # silence after the end
    expected = as_array(reference_signal(5, 0.5))
    assert correlation(expected, played) > 0.99
    with pytest.raises(AudioFileError, match=r"missing\.wav"):
        WavSource(tmp_path / "missing.wav")


def test_wav_source_loops(tmp_path: Path) -> None:
    path = tmp_path / "beep.wav"
    write_wav(path, array.array("h", [1000] * 4800), RATE, channels=1)  # 0.1 s

    async def scenario() -> npt.NDArray[np.float64]:
        source = WavSource(path, loop=True, clock=UnpacedClock())
        frames = await take(source, 25)
        source.stop()
        return np.concatenate([frame_samples(f) for f in frames])

    played = asyncio.run(scenario())
    assert np.count_nonzero(played) > 0.95 * len(played)


def stereo_frame(pts: int, value: int, samples: int = 960) -> AudioFrame:
    frame = AudioFrame.from_ndarray(
        np.full((1, samples * 2), value, dtype=np.int16), format="s16", layout="stereo"
    )
    frame.sample_rate = RATE
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, RATE)
    return frame


def test_wav_recorder_downmixes_and_keeps_the_timeline(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    recorder = WavRecorder(path)
    recorder.write(stereo_frame(10_000, 100))
    recorder.write(stereo_frame(10_960, 200))
    recorder.write(stereo_frame(10_960 + 960 + 480, 300))  # 10 ms lost: filled with silence
    huge_gap = int(MAX_GAP_FILL_S * RATE) + 1
    recorder.write(stereo_frame(10_960 + 960 + 480 + 960 + huge_gap, 400))  # not filled
    recorder.close()
    recorder.close()
    rate, heard = read_wav(path)
    assert rate == RATE
    assert recorder.gap_samples_filled == 480
    assert len(heard) == 960 * 4 + 480 == recorder.samples_written
    assert list(heard[[0, 960, 1920, 2400, 2880 + 480]]) == [100, 200, 0, 300, 400]


# -- the encoder ----------------------------------------------------------------------------


def test_encoder_track_makes_voice_sized_mono_opus() -> None:
    seconds = 3.0
    source = ReferenceSignalSource(11, seconds, clock=UnpacedClock())
    track = OpusEncoderTrack(source, OpusSettings())

    async def scenario() -> list[Any]:
        return [await track.recv() for _ in range(int(seconds * 25) - 2)]

    packets = asyncio.run(scenario())
    assert [p.pts for p in packets[:3]] == [0, 1920, 3840]  # 40 ms packets
    assert all(p.time_base == fractions.Fraction(1, RATE) for p in packets)
    kbps = sum(p.size for p in packets) * 8 / (len(packets) * 0.04) / 1000
    target = OpusSettings().bitrate_bps / 1000
    assert 0.9 * target <= kbps <= 1.3 * target  # constrained VBR around the target
    assert track.bytes_encoded == sum(p.size for p in packets)
    # TOC byte (RFC 6716 §3.1): s bit clear = mono
    assert all(bytes(p)[0] & 0x04 == 0 for p in packets)

    decoder = av.CodecContext.create("libopus", "r")
    assert isinstance(decoder, av.AudioCodecContext)
    decoded: list[npt.NDArray[np.float64]] = []
    for packet in packets:
        for frame in decoder.decode(packet):
            decoded.append(frame_samples(frame).reshape(-1, frame.layout.nb_channels).mean(axis=1))
    heard = np.concatenate(decoded)
    assert correlation(as_array(reference_signal(11, seconds)), heard) >= MIN_CORRELATION


def test_encoder_track_pauses_without_output_and_keeps_the_clock() -> None:
    source = ReferenceSignalSource(3, 2.0, clock=UnpacedClock())
    track = OpusEncoderTrack(source)

    async def scenario() -> None:
        first = await track.recv()
        track.pause()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(track.recv(), 0.05)
        consumed = source._samples
        assert consumed > 10 * 960  # the source was still read, at its own pace
        packets_while_paused = track.packets_encoded
        track.resume()
        after = await track.recv()
        assert track.packets_encoded == packets_while_paused + 1
        # within two 40 ms packets of where the source is
        assert first.pts == 0 and after.pts is not None and after.pts >= consumed - 2 * 1920
        track.stop()
        assert source.readyState == "ended"
        with pytest.raises(MediaStreamError):
            await track.recv()

    asyncio.run(scenario())


# -- in-process aiortc checks (no network) -------------------------------------------------


def test_aiortc_internals_still_exist() -> None:
    """The private attributes aiortc_internals reads: fails if an aiortc upgrade moves them."""

    async def scenario() -> None:
        pc = RTCPeerConnection(CallConfig().rtc_configuration())
        pc.addTransceiver("audio", direction="sendrecv")
        try:
            aiortc_internals.check_internals(pc)
            assert aiortc_internals.selected_pair(pc) is None
            assert aiortc_internals.peer_certificate(pc) is None
        finally:
            await pc.close()

    asyncio.run(scenario())


def test_session_refuses_misuse_and_garbage() -> None:
    async def scenario() -> None:
        session = MediaSession("c", SilenceSource())
        with pytest.raises(LocalProtocolError):
            await session.apply_answer(SAMPLE_SDP)
        with pytest.raises(LocalProtocolError):
            await session.wait_connected(0.1)
        with pytest.raises(DecodeError):
            await session.accept_offer("v=0\r\nthis is no SDP\r\n")
        assert session.state.value == "failed"
        assert session.failure is not None and "fingerprint" in session.failure
        with pytest.raises(LocalProtocolError):
            session.hold()
        await session.close()
        assert session.state is MediaState.CLOSED
        assert (await session.stats())["state"] == "closed"

        changes: list[str] = []
        garbage = MediaSession(
            "d", SilenceSource(), on_state_change=lambda s: changes.append(s.state.value)
        )
        with pytest.raises(DecodeError):
            await garbage.accept_offer(SAMPLE_SDP)  # fingerprints, but no usable media
        await garbage.close()
        assert changes == ["connecting", "failed", "closed"]
        assert (await garbage.stats())["path"] is None

    asyncio.run(scenario())


def test_offer_is_opus_only_with_our_fmtp() -> None:
    async def scenario() -> str:
        session = MediaSession("c", SilenceSource(), config=CallConfig(opus=OpusSettings(24_000)))
        try:
            return await session.create_offer()
        finally:
            await session.close()

    sdp = asyncio.run(scenario())
    assert re.search(r"^m=audio \d+ UDP/TLS/RTP/SAVPF 96\r$", sdp, re.MULTILINE)
    assert "a=fmtp:96 minptime=10;ptime=40;stereo=0;sprop-stereo=0;" in sdp
    assert "maxaveragebitrate=24000" in sdp
    assert len(sdp_fingerprints(sdp)) >= 1
    assert "a=end-of-candidates" in sdp  # non-trickle: gathering finished
    assert RTCRtpSender.getCapabilities("audio").codecs[0].mimeType == "audio/opus"


def test_stats_intervals() -> None:
    first = StatsSample(at=10.0)
    second = StatsSample(
        at=12.0,
        bytes_sent=12_000,
        bytes_received=6_000,
        rtp_packets_received=95,
        packets_lost=5,
        jitter_rtp=480,
        rtt_s=0.0421,
        remote_packets_lost=1,
        remote_fraction_lost=0.25,
    )
    got = call_stats(first, second)
    assert got["bitrate_kbps"] == {"sent": 48.0, "received": 24.0}
    assert got["loss"] == 0.05
    assert got["jitter_ms"] == 10.0
    assert got["rtt_ms"] == 42.1
    assert got["remote_loss"] == 0.25
    third = StatsSample(at=13.0, bytes_sent=12_000, rtp_packets_received=95, packets_lost=5)
    assert call_stats(second, third)["loss"] == 0.0  # nothing expected in the interval
    assert call_stats(second, third)["rtt_ms"] is None
    assert call_stats(None, first)["bitrate_kbps"]["sent"] is None  # zero-length interval


# -- real calls between two network namespaces ----------------------------------------------


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_available()
    with NetLab() as lab:
        yield lab


def start_pair(
    lab: NetLab, tmp_path: Path, caller_args: list[str], callee_args: list[str]
) -> tuple[LabProbe, LabProbe]:
    caller_host, callee_host = lab.public_host("caller"), lab.public_host("callee")
    caller = LabProbe(lab, caller_host, caller_args, tmp_path / "caller.log")
    callee = LabProbe(lab, callee_host, callee_args, tmp_path / "callee.log")
    caller.ready()
    callee.ready()
    return caller, callee


def sleep(seconds: float) -> None:
    asyncio.run(asyncio.sleep(seconds))


RTT_WAIT_S = 10.0


def stats_with_rtt(probe: ProbeClient, min_packets: int = 0) -> dict[str, Any]:
    """Stats once an RTT is known (and at least `min_packets` RTP packets arrived). aiortc
    computes the RTT only from a receiver report that answers the *latest* sender report,
    and both go out at random 0.5-1.5 s intervals, so the first RTT can take a few seconds."""
    for _ in range(int(RTT_WAIT_S / 0.25)):
        stats = probe.stats()
        if stats["rtt_ms"] is not None and stats["rtp_packets_received"] >= min_packets:
            return stats
        sleep(0.25)
    raise AssertionError(f"no RTT and {min_packets} packets within {RTT_WAIT_S} s: {stats}")


def connect(caller: LabProbe, callee: LabProbe, offer_filter: Any = None) -> tuple[str, str]:
    offer = caller.must("offer")["sdp"]
    if offer_filter is not None:
        offer = offer_filter(offer)
    answer = callee.must("accept", sdp=offer)["sdp"]
    caller.must("answer", sdp=answer)
    return offer, answer


def test_call_direct_voice_sized_and_faithful(lab: NetLab, tmp_path: Path) -> None:
    """Both ways: connects direct, ≤ 48 kbit/s on the wire, the audio arrives intact."""
    seconds = 6.0
    caller_file, callee_heard = tmp_path / "caller-says.wav", tmp_path / "callee-heard.wav"
    # any rate and channel count: the caller plays a 16 kHz stereo file
    write_wav(caller_file, reference_signal(21, seconds, sample_rate=16_000), 16_000, 2)
    caller, callee = start_pair(
        lab,
        tmp_path,
        ["--play", str(caller_file), "--record", str(tmp_path / "caller-heard.wav")],
        ["--signal", "22", "--signal-seconds", str(seconds), "--record", str(callee_heard)],
    )
    connect(caller, callee)
    caller.must("wait", timeout_s=5)
    callee.must("wait", timeout_s=5)
    before = [caller.wire(), callee.wire()]
    start = [caller.must("cpu")["wall_s"], callee.must("cpu")["wall_s"]]
    caller.stats(), callee.stats()  # the next stats cover the same interval
    sleep(4.0)
    after = [caller.wire(), callee.wire()]
    elapsed = [caller.must("cpu")["wall_s"] - start[0], callee.must("cpu")["wall_s"] - start[1]]
    stats = [caller.stats(), callee.stats()]
    rtts = [stats_with_rtt(caller)["rtt_ms"], stats_with_rtt(callee)["rtt_ms"]]
    played_s = caller.must("cpu")["wall_s"] - start[0]
    sleep(max(0.0, seconds - played_s))  # let the rest of the signal arrive
    finals = [caller.close(), callee.close()]

    rates = [wire_rate(before[i], after[i], elapsed[i]) for i in (0, 1)]
    print(f"\nwire rates caller->callee {rates[0]}, callee->caller {rates[1]}")
    for side, stat in zip(("caller", "callee"), stats, strict=True):
        print(side, json.dumps(stat))
        assert stat["state"] == "connected"
        assert stat["path"] == "direct"
        assert stat["local_candidate"].startswith("host 10.99.0.")
        # set-up speed is bench_media's figure; here only that it was measured, in ms
        assert stat["setup_ms"] is not None and 0 < stat["setup_ms"] < 60_000
        assert stat["jitter_ms"] is not None and 0 <= stat["jitter_ms"] < 1000  # ms, not s
        assert stat["loss"] == 0.0 and stat["packets_lost"] == 0
        assert stat["bytes_sent"] > 0 and stat["bytes_received"] > 0
        assert 15 < stat["bitrate_kbps"]["sent"] < WIRE_LIMIT_KBPS  # UDP payload
        assert stat["dtls_fingerprint"].startswith("sha-256 ")
        # aiortc sent exactly our encoder's packets (one or two may still be in flight)
        assert 0 <= stat["opus_packets"] - stat["rtp_packets_sent"] <= 2
        assert 0 <= stat["opus_bytes"] - stat["rtp_payload_bytes_sent"] <= 2 * 200
    assert stats[0]["dtls_fingerprint"] != stats[1]["dtls_fingerprint"]
    assert all(rtt is not None and 0 < rtt < 100 for rtt in rtts), rtts
    for final, stat in zip(finals, stats, strict=True):  # kept after hanging up
        assert final["state"] == "closed" and final["path"] == "direct"
        assert final["bytes_sent"] > stat["bytes_sent"]
    for rate in rates:
        print(
            f"on the wire: {rate.ip_kbps:.2f} kbit/s as IPv4 packets, "
            f"{rate.ipv6_kbps:.2f} as IPv6 packets, {rate.udp_payload_kbps:.2f} UDP payload"
        )
        assert rate.packets_per_s == pytest.approx(25, abs=3)  # 40 ms packets
        # whole packets, headers included, in the worst case: IPv6 (20 bytes more a packet)
        assert rate.ip_kbps <= rate.ipv6_kbps <= WIRE_LIMIT_KBPS
    assert all(s["srtp_profile"] == "SRTP_AES128_CM_SHA1_80" for s in stats), stats

    for heard, seed in (("callee-heard.wav", 21), ("caller-heard.wav", 22)):
        sample_rate, samples = read_wav(tmp_path / heard)
        assert sample_rate == RATE
        assert len(samples) > (seconds - 1.0) * RATE
        score = correlation(as_array(reference_signal(seed, seconds)), samples)
        print(f"{heard}: correlation {score:.4f}")
        assert score >= MIN_CORRELATION


def sent_kbps(probe: LabProbe, seconds: float) -> WireRate:
    before, start = probe.wire(), probe.must("cpu")["wall_s"]
    sleep(seconds)
    after, end = probe.wire(), probe.must("cpu")["wall_s"]
    return wire_rate(before, after, end - start)


def test_hold_sends_no_audio_and_resume_restores_it(lab: NetLab, tmp_path: Path) -> None:
    caller, callee = start_pair(
        lab,
        tmp_path,
        ["--signal", "31"],
        ["--signal", "32", "--record", str(tmp_path / "callee-heard.wav")],
    )
    connect(caller, callee)
    caller.must("wait", timeout_s=5)
    callee.must("wait", timeout_s=5)
    sleep(0.5)
    talking = sent_kbps(caller, 1.0)
    caller.must("hold")
    sleep(0.2)
    packets_at_hold = caller.stats()["rtp_packets_sent"]
    held = sent_kbps(caller, 2.0)
    held_stats = caller.stats()
    caller.must("resume")
    sleep(0.2)
    resumed = sent_kbps(caller, 1.0)
    final = caller.stats()
    caller.close()
    callee.close()

    print(f"\ntalking {talking}\nheld {held}\nresumed {resumed}")
    assert held_stats["on_hold"] and not final["on_hold"]
    assert held_stats["state"] == final["state"] == "connected"  # the path stayed up
    assert held_stats["rtp_packets_sent"] == packets_at_hold  # no RTP at all on hold
    assert held.udp_payload_kbps < 3  # RTCP and ICE consent checks only
    assert talking.udp_payload_kbps > 15 and resumed.udp_payload_kbps > 15
    assert final["rtp_packets_sent"] > packets_at_hold + 20  # 1.2 s at 25 packets/s
    # the callee's recording keeps the call's timeline: the hold is silence, not a cut
    with wave.open(str(tmp_path / "callee-heard.wav"), "rb") as f:
        recorded_s = f.getnframes() / RATE
    assert recorded_s > 0.5 + 1.0 + 0.2 + 2.0 + 0.2


def test_offer_with_a_foreign_fingerprint_is_refused(lab: NetLab, tmp_path: Path) -> None:
    """A supernode that swaps the fingerprint (here: after signing) cannot get in between."""
    impostor = certificate_fingerprint(self_signed("impostor")).split(" ", 1)[1]

    def swap(offer: str) -> str:
        return re.sub(r"(a=fingerprint:sha-256 )\S+", rf"\g<1>{impostor}", offer)

    caller, callee = start_pair(lab, tmp_path, ["--signal", "41"], [])
    connect(caller, callee, offer_filter=swap)
    refused = callee.ask("wait", timeout_s=5.0)
    assert not refused["ok"] and "CallFailed" in refused["error"], refused
    stats = callee.stats()
    assert stats["state"] == "failed" and stats["dtls_fingerprint"] is None
    assert stats["bytes_received"] == 0 or stats["rtp_packets_received"] == 0
    caller_side = caller.ask("wait", timeout_s=3.0)
    print(f"\ncallee: {refused}\ncaller: {caller_side}, {caller.stats()['state']}")
    caller.close()
    callee.close()


TURN_USER, TURN_PASSWORD, TURN_REALM = "caller", "short-lived-secret", "peerphone.test"


def start_coturn(lab: NetLab, tmp_path: Path) -> Host:
    """Debian's coturn as the TURN server (the reference implementation), on a public host."""
    relay = lab.public_host("relay")
    argv = ["turnserver", "-n", "--listening-ip", relay.addr, "--relay-ip", relay.addr]
    argv += ["--listening-port", "3478", "--min-port", "49152", "--max-port", "49200"]
    argv += ["--lt-cred-mech", "--realm", TURN_REALM, "--user", f"{TURN_USER}:{TURN_PASSWORD}"]
    argv += ["--no-tls", "--no-dtls", "--no-cli", "--fingerprint", "--simple-log"]
    argv += ["--log-file", str(tmp_path / "turnserver.log"), "--pidfile", str(tmp_path / "t.pid")]
    lab.run(relay, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = 50
    while deadline and ":3478" not in lab.exec(relay, ["ss", "-lun"]):
        sleep(0.1)
        deadline -= 1
    assert deadline, (tmp_path / "turnserver.log").read_text()
    return relay


def test_force_relay_goes_through_turn(lab: NetLab, tmp_path: Path) -> None:
    if shutil.which("turnserver") is None:
        pytest.skip("coturn not installed (apt-get install -y coturn)")
    relay = start_coturn(lab, tmp_path)
    turn = f"turn:{relay.addr}:3478?transport=udp,{TURN_USER},{TURN_PASSWORD}"
    caller, callee = start_pair(
        lab, tmp_path, ["--signal", "51", "--ice-server", turn, "--force-relay"], ["--signal", "52"]
    )
    offer, _ = connect(caller, callee)
    assert {c.type for c in sdp_candidates(offer)} == {"relay"}  # nothing else is offered
    caller.must("wait", timeout_s=10)
    callee.must("wait", timeout_s=10)
    # 26 packets is a second of audio at 40 ms per packet: it flows, not just a first burst
    stats = [stats_with_rtt(caller, min_packets=26), stats_with_rtt(callee, min_packets=26)]
    caller.close()
    callee.close()
    print("\n" + "\n".join(json.dumps(s) for s in stats))
    assert [s["path"] for s in stats] == ["relay", "relay"]
    assert stats[0]["local_candidate"].startswith(f"relay {relay.addr}:")
    assert stats[1]["remote_candidate"].startswith(f"relay {relay.addr}:")
    for stat in stats:
        assert stat["rtt_ms"] > 0


def test_sound_card_absent_is_a_clean_error() -> None:
    if Path("/dev/snd").exists():
        pytest.skip("this machine has a sound card")
    with pytest.raises(AudioDeviceUnavailable):
        microphone()
    with pytest.raises(AudioDeviceUnavailable):
        SpeakerSink()
