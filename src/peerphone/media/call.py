"""One call's audio: a `MediaSession` wraps one aiortc RTCPeerConnection.

Non-trickle: `create_offer` / `accept_offer` return only after ICE gathering finished, so
the SDP carries every candidate and the DTLS fingerprints. The signaling layer signs that
exact text with the user key, and the peer passes the exact text whose signature it
verified to `accept_offer` / `apply_answer`. aiortc then refuses a DTLS peer whose
certificate does not match those fingerprints, and on connection `MediaSession` checks
the certificate again itself (`aiortc_internals.peer_certificate`).

Received audio takes our own path (media/playout.py): jitter buffer, retransmission
requests, Opus FEC and concealment through libopus; aiortc's decoder stays idle. Once a
second the session reads aiortc's RTCP numbers: the round trip sets how long the jitter
buffer may wait for a retransmission; the share of packets the peer asks for again lowers
the bitrate (the wire budget holds) and the loss it reports less that share (what
retransmission does not repair) sets how much FEC the encoder adds.

Hold: the encoder stops returning packets, so no RTP is sent at all (ICE consent checks
and RTCP go on, so the path stays open), and received audio is dropped instead of
played. No renegotiation: the peer learns of the hold from signaling (HOLD / RESUME).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from av.audio.frame import AudioFrame

from peerphone.errors import DecodeError, LocalProtocolError, PeerphoneError
from peerphone.media import aiortc_internals
from peerphone.media.jitter import JitterConfig
from peerphone.media.opus import OpusEncoderTrack, OpusSettings, with_opus_fmtp
from peerphone.media.playout import Player
from peerphone.media.sdp import (
    MAX_SDP_CHARS,
    certificate_fingerprint,
    certificate_matches,
    sdp_candidates,
    sdp_fingerprints,
    without_rtp_header_extensions,
)
from peerphone.media.sinks import AudioSink, DiscardSink
from peerphone.media.stats import (
    RepairWindow,
    StatsSample,
    call_stats,
    loss_out,
    mos_estimate,
    sample_report,
)

log = logging.getLogger(__name__)

QUALITY_PERIOD_S = 1.0  # how often RTCP numbers steer FEC and the jitter buffer
MAX_NACKED_REMEMBERED = 4096  # sequence numbers the peer asked for again, for loss_out
DEFAULT_CONNECT_TIMEOUT_S = 15.0  # ICE checks plus DTLS; aioice gives up on pairs by ~10 s
_ICE_URL = re.compile(r"^(stun|stuns|turn|turns):[^\s?:]+(?::\d{1,5})?(?:\?transport=(udp|tcp))?$")


class CallFailed(PeerphoneError):
    """The call's media could not be set up or broke: ICE, DTLS or the fingerprint check."""


class MediaState(enum.Enum):
    NEW = "new"
    OFFERED = "offered"  # our offer is out, waiting for the answer
    CONNECTING = "connecting"  # both descriptions set: ICE checks, then DTLS
    CONNECTED = "connected"  # DTLS up and its certificate matches the signed SDP
    FAILED = "failed"
    CLOSED = "closed"


# What each operation or aiortc event may move the session from, and to.
TRANSITIONS: dict[tuple[MediaState, str], MediaState] = {
    (MediaState.NEW, "create_offer"): MediaState.OFFERED,
    (MediaState.NEW, "accept_offer"): MediaState.CONNECTING,
    (MediaState.OFFERED, "apply_answer"): MediaState.CONNECTING,
    (MediaState.CONNECTING, "connected"): MediaState.CONNECTED,
    (MediaState.NEW, "fail"): MediaState.FAILED,
    (MediaState.OFFERED, "fail"): MediaState.FAILED,
    (MediaState.CONNECTING, "fail"): MediaState.FAILED,
    (MediaState.CONNECTED, "fail"): MediaState.FAILED,
}


@dataclass(frozen=True, slots=True)
class IceServer:
    """A STUN or TURN server for ICE, e.g. ``turn:198.51.100.7:3478?transport=udp``.

    Our supernodes hand these out with short-lived TURN credentials. aiortc uses only the
    first STUN and the first TURN server of a session's list.
    """

    url: str
    username: str | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        if not _ICE_URL.match(self.url):
            raise LocalProtocolError(f"not a STUN/TURN URL: {self.url!r}")
        if self.url.startswith("turn") and (self.username is None or self.credential is None):
            raise LocalProtocolError(f"TURN server {self.url!r} needs a username and credential")


@dataclass(frozen=True, slots=True)
class CallConfig:
    """How a call sets up its media.

    ``aiortc_encoder=True`` hands raw frames to aiortc's own Opus encoder (96 kbit/s
    stereo): only for benchmarks that compare against it.
    """

    ice_servers: tuple[IceServer, ...] = ()
    force_relay: bool = False  # only TURN relay candidates (iceTransportPolicy RELAY)
    opus: OpusSettings = field(default_factory=OpusSettings)
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    aiortc_encoder: bool = False
    jitter: JitterConfig = field(default_factory=JitterConfig)

    def rtc_configuration(self) -> RTCConfiguration:
        # An explicit list, even empty: with None aiortc asks a public STUN server.
        servers = [RTCIceServer(s.url, s.username, s.credential) for s in self.ice_servers]
        policy = RTCIceTransportPolicy.RELAY if self.force_relay else RTCIceTransportPolicy.ALL
        return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


class MediaSession:
    """The audio of one call: offer/answer, connection, hold, statistics, close."""

    def __init__(
        self,
        call_id: str,
        source: MediaStreamTrack,
        sink: AudioSink | None = None,
        config: CallConfig | None = None,
        *,
        on_state_change: Callable[[MediaSession], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`on_state_change` is called after every change of `state` (e.g. to hang up when
        the media fails mid-call: ICE consent lost). Needs a running event loop."""
        self.call_id = call_id
        self.config = config or CallConfig()
        self.sink: AudioSink = sink if sink is not None else DiscardSink()
        self.state = MediaState.NEW
        self.failure: str | None = None
        self.on_hold = False
        self.local_sdp: str | None = None
        self.remote_sdp: str | None = None
        self.remote_fingerprints: list[str] = []
        self.verified_fingerprint: str | None = None  # sha-256 of the peer's DTLS cert
        self.setup_ms: float | None = None
        self._clock = clock
        self._started_at: float | None = None
        self._last_sample: StatsSample | None = None
        self._last_pair: aiortc_internals.SelectedPair | None = None
        self._final_stats: dict[str, Any] = call_stats(None, StatsSample(at=clock())) | {
            "path": None,
            "local_candidate": None,
            "remote_candidate": None,
        }
        self._on_state_change = on_state_change
        self._settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[None]] = set()  # fire-and-forget work, kept alive
        self.encoder: OpusEncoderTrack | None = None
        track: MediaStreamTrack = source
        if not self.config.aiortc_encoder:
            self.encoder = OpusEncoderTrack(source, self.config.opus)
            track = self.encoder
        self._pc = RTCPeerConnection(self.config.rtc_configuration())
        self._pc.on("connectionstatechange", self._on_connection_state)
        transceiver = self._pc.addTransceiver(track, direction="sendrecv")
        self.player = Player(
            self._write_sink, self.config.jitter, request_retransmission=self._request, clock=clock
        )
        aiortc_internals.tap_incoming_rtp(self._pc, self.player.on_rtp)
        self._nacked: dict[int, None] = {}  # sequence numbers the peer asked for, in order
        self._nacked_total = 0
        aiortc_internals.count_retransmissions(self._pc, self._on_nack)
        self._quality: asyncio.Task[None] | None = None
        opus = [
            c
            for c in RTCRtpSender.getCapabilities("audio").codecs
            if c.mimeType.lower() == "audio/opus"
        ]
        transceiver.setCodecPreferences(opus)  # Opus or nothing: never PCMU at 64 kbit/s
        aiortc_internals.prefer_short_srtp_tag(self._pc)

    @property
    def connected(self) -> bool:
        return self.state is MediaState.CONNECTED

    @property
    def peer_connection(self) -> RTCPeerConnection:
        return self._pc

    # -- offer / answer -------------------------------------------------------------------

    async def create_offer(self) -> str:
        """Gather candidates and return the complete offer SDP (sign this exact text)."""
        self._move("create_offer")
        self._started_at = self._clock()
        offer = await self._pc.createOffer()
        return await self._set_local(offer)

    async def accept_offer(self, offer_sdp: str) -> str:
        """Take the caller's (verified) offer; return the complete answer SDP to sign.

        Raises DecodeError when the offer is unusable (the session is then failed).
        """
        self._move("accept_offer")
        self._started_at = self._clock()
        await self._set_remote(offer_sdp, "offer")
        answer = await self._pc.createAnswer()
        return await self._set_local(answer)

    async def apply_answer(self, answer_sdp: str) -> None:
        """Take the callee's (verified) answer; ICE and DTLS start."""
        self._move("apply_answer")
        await self._set_remote(answer_sdp, "answer")

    async def _set_local(self, description: RTCSessionDescription) -> str:
        munged = without_rtp_header_extensions(with_opus_fmtp(description.sdp, self.config.opus))
        await self._pc.setLocalDescription(RTCSessionDescription(munged, description.type))
        sdp = self._pc.localDescription.sdp
        if len(sdp) > MAX_SDP_CHARS:
            raise LocalProtocolError(f"local SDP of {len(sdp)} characters: too many interfaces?")
        self.local_sdp = sdp
        return sdp

    async def _set_remote(self, sdp: str, kind: str) -> None:
        try:
            self.remote_fingerprints = sdp_fingerprints(sdp)
            sdp_candidates(sdp)  # malformed candidate lines: refuse before aiortc sees them
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp, kind))
        except Exception as exc:  # garbage from the peer must not escape as anything else
            reason = f"unusable remote {kind}: {type(exc).__name__}: {exc}"
            await self._fail(reason)
            raise DecodeError(reason) from exc
        self.remote_sdp = sdp

    # -- connection -----------------------------------------------------------------------

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Return once connected and verified; raise CallFailed on failure or timeout."""
        if self.state is MediaState.CONNECTED:
            return
        if self.state in (MediaState.NEW, MediaState.OFFERED):
            raise LocalProtocolError(f"wait_connected in state {self.state.value}")
        limit = self.config.connect_timeout_s if timeout_s is None else timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(self._settled), limit)
        except TimeoutError:
            await self._fail(f"not connected within {limit} s")
        if not self.connected:
            raise CallFailed(self.failure or f"call is {self.state.value}")

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        if state == "connected" and self.state is MediaState.CONNECTING:
            self._verify_and_connect()
        elif state == "failed":
            self._spawn(self._fail(self._failure_reason()))

    def _failure_reason(self) -> str:
        for transceiver in self._pc.getTransceivers()[:1]:
            dtls = transceiver.receiver.transport
            if dtls.state == "failed":
                return "DTLS failed (handshake, or a certificate not matching the signed SDP)"
            if dtls.transport.state == "failed":
                return "ICE failed: no candidate pair works (relay needed, or servers down)"
        return "connection failed"

    def _verify_and_connect(self) -> None:
        certificate = aiortc_internals.peer_certificate(self._pc)
        if certificate is None or not certificate_matches(certificate, self.remote_fingerprints):
            self._spawn(self._fail("DTLS certificate does not match the signed SDP"))
            return
        self.verified_fingerprint = certificate_fingerprint(certificate)
        now = self._clock()
        if self._started_at is not None:
            self.setup_ms = round((now - self._started_at) * 1000, 1)
        self._last_sample = StatsSample(at=now)
        self._quality = asyncio.ensure_future(self._steer())
        self._move("connected")
        if not self._settled.done():
            self._settled.set_result(None)

    def _write_sink(self, frame: AudioFrame) -> None:
        try:
            self.sink.write(frame)
        except OSError as exc:
            log.warning("call %s: sink failed, dropping audio from now on: %s", self.call_id, exc)
            self.sink = DiscardSink()

    async def _request(self, ssrc: int, seqs: list[int]) -> None:
        await aiortc_internals.request_retransmission(self._pc, ssrc, seqs)

    def _on_nack(self, seq: int) -> None:
        if seq not in self._nacked:
            self._nacked_total += 1
            self._nacked[seq] = None
            if len(self._nacked) > MAX_NACKED_REMEMBERED:
                del self._nacked[next(iter(self._nacked))]

    async def _steer(self) -> None:
        """Once a second: the round trip to the jitter buffer; over the last ten seconds,
        the share of packets the peer asks for again to the bitrate (the wire budget
        holds) and the loss retransmission leaves to FEC (media/stats.py RepairWindow)."""
        window = RepairWindow()
        while self.state is MediaState.CONNECTED:
            await asyncio.sleep(QUALITY_PERIOD_S)
            try:
                sample = sample_report(await self._pc.getStats(), self._clock())
            except Exception as exc:  # statistics must never end the call
                log.debug("call %s: no statistics: %s", self.call_id, exc)
                continue
            if sample.rtt_s is not None:
                self.player.buffer.rtt_s = sample.rtt_s
            if self.encoder is None:
                continue
            window.add(self.encoder.packets_encoded, self._nacked_total, sample.remote_packets_lost)
            share = window.asked_again_share()
            if share is not None:
                self.encoder.retransmission_share(share)
            fec_pct = window.fec_loss_pct()
            if fec_pct is not None:
                self.encoder.expected_loss_pct = fec_pct

    # -- hold, statistics, close ----------------------------------------------------------

    def hold(self) -> None:
        """Stop sending audio (no RTP at all) and stop playing what arrives."""
        self._set_hold(True)

    def resume(self) -> None:
        self._set_hold(False)

    def _set_hold(self, on_hold: bool) -> None:
        if self.state in (MediaState.FAILED, MediaState.CLOSED):
            raise LocalProtocolError(f"hold/resume on a {self.state.value} call")
        if self.encoder is None:
            raise LocalProtocolError("hold needs our encoder (aiortc_encoder=False)")
        self.on_hold = on_hold
        self.player.muted = on_hold
        if on_hold:
            self.encoder.pause()
        else:
            self.encoder.resume()

    async def stats(self) -> dict[str, Any]:
        """RTT, jitter, loss and bitrates since the previous call of `stats` (or connection).

        ``path`` is ``direct`` or ``relay`` (a TURN relay on either side of the selected
        candidate pair), None before ICE completes. After `close`, the numbers taken just
        before closing.
        """
        # Read the live numbers first: the state below must not be older than they are (a
        # view that says "connected" with no set-up time was this race).
        live = {} if self.state is MediaState.CLOSED else await self._live_stats()
        out: dict[str, Any] = {
            "call_id": self.call_id,
            "state": self.state.value,
            "on_hold": self.on_hold,
            "failure": self.failure,
            "setup_ms": self.setup_ms,
            "dtls_fingerprint": self.verified_fingerprint,
            "srtp_profile": aiortc_internals.srtp_profile(self._pc),
        }
        if self.state is MediaState.CLOSED:
            return self._final_stats | out
        return live | out

    async def _live_stats(self) -> dict[str, Any]:
        now = self._clock()
        sample = sample_report(await self._pc.getStats(), now)
        out = call_stats(self._last_sample, sample)
        self._last_sample = sample
        pair = aiortc_internals.selected_pair(self._pc) or self._last_pair
        self._last_pair = pair  # ICE forgets its pair on close; the call's path does not
        out["path"] = None if pair is None else "relay" if pair.relayed else "direct"
        out["local_candidate"] = (
            None if pair is None else _describe(pair.local_type, pair.local_address)
        )
        out["remote_candidate"] = (
            None if pair is None else _describe(pair.remote_type, pair.remote_address)
        )
        out |= self.player.stats()
        sent = self.encoder.packets_encoded if self.encoder is not None else sample.rtp_packets_sent
        out["loss_out"] = loss_out(sample, sent)
        out["mos_estimate"] = mos_estimate(
            rtt_ms=out["rtt_ms"],
            jitter_buffer_ms=out["jitter_buffer_ms"],
            packet_ms=self.config.opus.frame_ms,
            concealed=out["concealed"],
        )
        if self.encoder is not None:
            out["opus_target_kbps"] = self.encoder.bitrate_bps / 1000
            out["opus_packets"] = self.encoder.packets_encoded
            out["opus_bytes"] = self.encoder.bytes_encoded
            out["fec_expected_loss_pct"] = self.encoder.expected_loss_pct
        return out

    async def close(self) -> None:
        """Hang up: stop the connection and the sink. Safe to call again."""
        if self.state is MediaState.CLOSED:
            return
        if self.state is not MediaState.FAILED:  # a failed call kept them when it failed
            await self._keep_final_stats()
        self._set_state(MediaState.CLOSED)
        if not self._settled.done():
            self._settled.set_result(None)
        await self._stop_receiving()
        self.sink.close()

    async def _fail(self, reason: str) -> None:
        if self.state in (MediaState.FAILED, MediaState.CLOSED):
            return
        log.info("call %s: media failed: %s", self.call_id, reason)
        self.failure = reason
        self._move("fail")
        if not self._settled.done():
            self._settled.set_result(None)
        await self._keep_final_stats()
        await self._stop_receiving()
        self.sink.close()

    async def _stop_receiving(self) -> None:
        await self._pc.close()
        await self.player.close()
        if self._quality is not None:
            self._quality.cancel()
            await asyncio.gather(self._quality, return_exceptions=True)

    async def _keep_final_stats(self) -> None:
        try:
            self._final_stats = await self._live_stats()
        except Exception as exc:  # statistics must never stop a hang-up
            log.warning("call %s: no final statistics: %s", self.call_id, exc)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _move(self, trigger: str) -> None:
        target = TRANSITIONS.get((self.state, trigger))
        if target is None:
            raise LocalProtocolError(f"{trigger} in state {self.state.value}")
        self._set_state(target)

    def _set_state(self, state: MediaState) -> None:
        self.state = state
        if self._on_state_change is not None:
            try:
                self._on_state_change(self)
            except Exception:  # the caller's bug must not break the call's own bookkeeping
                log.exception("call %s: on_state_change failed", self.call_id)


def _describe(candidate_type: str, address: tuple[str, int]) -> str:
    return f"{candidate_type} {address[0]}:{address[1]}"
