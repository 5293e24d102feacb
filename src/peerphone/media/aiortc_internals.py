"""What calls need from aiortc/aioice that has no public API, in one place.

* The selected ICE candidate pair (is the call direct or relayed?):
  ``RTCIceTransport._connection`` is the ``aioice.Connection``; its ``_nominated`` maps
  an ICE component to the nominated ``CandidatePair`` (whose ``local_candidate`` and
  ``remote_candidate`` are public). aiortc's stats have no candidate-pair entries.
* The certificate the peer actually used in the DTLS handshake: ``RTCDtlsTransport._ssl``
  is the pyOpenSSL connection. aiortc already refuses a certificate that does not match
  the remote SDP's fingerprints; reading it back lets `MediaSession` check that again
  against the *signed* SDP, so an aiortc regression cannot silently drop the binding.

Both are read-only. Two taps on the RTP path (one call's objects only, never global):

* `tap_incoming_rtp`: our own jitter buffer and libopus decoder take the received packets
  (media/playout.py). ``RTCRtpReceiver.__jitter_buffer`` (name-mangled) is replaced by an
  object with its ``add`` that hands every packet to us and never returns a frame, so
  aiortc's own buffer (which stalls on a gap until 16 packets queue) and its PyAV decoder
  (no concealment, no FEC) stay idle. Everything before it in ``_handle_rtp_packet`` still
  runs: the RTCP receiver statistics and reports, SSRC and payload-type checks. Our RTCP
  receiver reports then tell the link's loss: aiortc counts a retransmitted packet as
  received (so its reports would show only what retransmission did not repair); the tap
  sets the stream's received count (``RTCRtpReceiver.__remote_streams``) to the packets
  whose first copy came.
* `request_retransmission` sends an RTCP NACK through ``RTCRtpReceiver._send_rtcp_nack``;
  aiortc's sender answers any NACK from its 128-packet history (``_retransmit``), which
  `count_retransmissions` wraps to count what the peer asked for.

One fix to aioice's behaviour, opted into by the caller:

* `restart_checks_on_incoming`: RFC 8445 section 7.3.1.4 (triggered checks) says a check
  from the peer on a pair whose own check is in progress cancels that check and enqueues
  a new one at once; aioice 0.13 waits for its retransmission (500 ms) instead. Behind
  two port-restricted cone NATs both ends' first checks cross, the first one is dropped
  by the peer's NAT, and the controlling end (aggressive nomination) then nominates
  whatever pair succeeds next: the TURN relay pair, ~60 ms later, not the direct one.

The aiortc range in pyproject.toml is the tested one, and
tests/loopback/test_media.py fails if an upgrade moves either attribute (`check_internals`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aioice import Candidate as IceCandidate
from aioice.ice import CandidatePair, Connection
from aiortc import RTCDtlsTransport, RTCIceTransport, RTCPeerConnection, RTCRtpReceiver
from aiortc.rtp import RTP_HISTORY_SIZE, RtpPacket
from cryptography import x509

ICE_COMPONENT_RTP = 1  # rtcp-mux: everything runs on component 1
_RECEIVER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_SENDER_HISTORY = "_RTCRtpSender__rtp_history"  # seq % RTP_HISTORY_SIZE -> packet sent

# (sequence number, RTP timestamp, payload, SSRC) of each received RTP packet -> how many
# of that stream's packets have had no first copy so far (None: leave aiortc's count)
RtpHandler = Callable[[int, int, bytes, int], int | None]
_RECEIVER_STREAMS = "_RTCRtpReceiver__remote_streams"


@dataclass(frozen=True, slots=True)
class SelectedPair:
    """The candidate pair ICE nominated: types are host, srflx, prflx or relay."""

    local_type: str
    local_address: tuple[str, int]
    remote_type: str
    remote_address: tuple[str, int]

    @property
    def relayed(self) -> bool:
        return "relay" in (self.local_type, self.remote_type)


def _transports(pc: RTCPeerConnection) -> list[RTCDtlsTransport]:
    # BUNDLE: every transceiver shares the first one's transport
    return [t.receiver.transport for t in pc.getTransceivers()][:1]


def _ice_connection(ice: RTCIceTransport) -> Connection:
    connection = ice._connection
    if not isinstance(connection, Connection):
        raise TypeError(f"aiortc's ICE transport holds {type(connection).__name__}")
    return connection


def selected_pair(pc: RTCPeerConnection) -> SelectedPair | None:
    """The nominated candidate pair of the call's transport, or None before ICE completes."""
    for dtls in _transports(pc):
        nominated: dict[int, CandidatePair] = _ice_connection(dtls.transport)._nominated
        pair = nominated.get(ICE_COMPONENT_RTP)
        if pair is None:
            continue
        local: IceCandidate = pair.local_candidate
        remote: IceCandidate = pair.remote_candidate
        return SelectedPair(
            local.type, (local.host, local.port), remote.type, (remote.host, remote.port)
        )
    return None


def peer_certificate(pc: RTCPeerConnection) -> x509.Certificate | None:
    """The certificate the peer presented in the DTLS handshake, once there was one."""
    for dtls in _transports(pc):
        ssl = dtls._ssl
        if ssl is None:
            continue
        certificate = ssl.get_peer_certificate(as_cryptography=True)
        if certificate is not None:
            return certificate
    return None


def prefer_short_srtp_tag(pc: RTCPeerConnection) -> None:
    """Offer AES_CM_128_HMAC_SHA1_80 first on this connection's DTLS transports.

    Its 10-byte tag instead of AEAD-GCM's 16 saves 6 bytes on every packet, 2.4 kbit/s of
    a 20 ms voice stream, which is what keeps a call under 48 kbit/s per direction as
    whole IP packets (decision 0010). It is WebRTC's mandatory-to-implement profile, so
    any peer has it. ``RTCDtlsTransport._srtp_profiles`` is per transport (aiortc copies
    its module list into it), read when the DTLS context is made: call this before the
    connection starts.
    """
    for dtls in _transports(pc):
        profiles = list(dtls._srtp_profiles)
        short = [p for p in profiles if p.openssl_profile == b"SRTP_AES128_CM_SHA1_80"]
        dtls._srtp_profiles = short + [p for p in profiles if p not in short]


def srtp_profile(pc: RTCPeerConnection) -> str | None:
    """The SRTP profile DTLS negotiated (None before it completes)."""
    for dtls in _transports(pc):
        ssl = getattr(dtls, "_ssl", None)
        if ssl is not None:
            selected = ssl.get_selected_srtp_profile()
            return selected.decode() if selected else None
    return None


class _RtpTap:
    """Stands in for aiortc's jitter buffer: every packet to `handler`, no frame back."""

    capacity = 16

    def __init__(self, handler: RtpHandler, streams: dict[int, Any]) -> None:
        self._handler = handler
        self._streams = streams  # aiortc's StreamStatistics by SSRC (its RTCP reports)

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        if not packet.payload:  # padding-only packets carry no audio
            return False, None
        missing = self._handler(
            packet.sequence_number, packet.timestamp, bytes(packet.payload), packet.ssrc
        )
        stream = self._streams.get(packet.ssrc)
        if missing is not None and stream is not None:
            stream.packets_received = max(0, stream.packets_expected - missing)
        return False, None


def _audio_receiver(pc: RTCPeerConnection) -> RTCRtpReceiver:
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            return transceiver.receiver
    raise TypeError("the peer connection has no audio transceiver")


def tap_incoming_rtp(pc: RTCPeerConnection, handler: RtpHandler) -> None:
    """Hand the audio receiver's RTP packets to `handler` instead of aiortc's decoder."""
    receiver = _audio_receiver(pc)
    streams = getattr(receiver, _RECEIVER_STREAMS, None)
    if not hasattr(receiver, _RECEIVER_BUFFER) or not isinstance(streams, dict):
        raise TypeError("RTCRtpReceiver has no jitter buffer or stream statistics to use")
    setattr(receiver, _RECEIVER_BUFFER, _RtpTap(handler, streams))


async def request_retransmission(pc: RTCPeerConnection, ssrc: int, seqs: list[int]) -> None:
    """Ask the peer to send these packets of stream `ssrc` again (RTCP generic NACK)."""
    await _audio_receiver(pc)._send_rtcp_nack(ssrc, seqs)


def count_retransmissions(pc: RTCPeerConnection, on_request: Callable[[int], None]) -> None:
    """Call `on_request(seq)` for each packet we sent that the peer asks us to send again
    (a receiver may ask for one we never sent: a DTX pause looks like packets overdue)."""
    sender = next(t.sender for t in pc.getTransceivers() if t.kind == "audio")
    retransmit = sender._retransmit
    history: dict[int, RtpPacket] = getattr(sender, _SENDER_HISTORY)

    async def counted(sequence_number: int) -> None:
        sent = history.get(sequence_number % RTP_HISTORY_SIZE)
        if sent is not None and sent.sequence_number == sequence_number:
            on_request(sequence_number)
        await retransmit(sequence_number)

    sender._retransmit = counted  # type: ignore[method-assign]


def check_internals(pc: RTCPeerConnection) -> None:
    """Raise if this aiortc no longer has what the functions above read (a test hook)."""
    transports = _transports(pc)
    if not transports:
        raise TypeError("the peer connection has no transceiver to inspect")
    for dtls in transports:
        if not hasattr(dtls, "_ssl"):
            raise TypeError("RTCDtlsTransport has no _ssl")
        if not isinstance(getattr(dtls, "_srtp_profiles", None), list):
            raise TypeError("RTCDtlsTransport has no _srtp_profiles list")
        receiver = _audio_receiver(pc)
        if not hasattr(receiver, _RECEIVER_BUFFER) or not hasattr(receiver, "_send_rtcp_nack"):
            raise TypeError("RTCRtpReceiver has no jitter buffer or _send_rtcp_nack")
        sender = next(t.sender for t in pc.getTransceivers() if t.kind == "audio")
        if not callable(getattr(sender, "_retransmit", None)):
            raise TypeError("RTCRtpSender has no _retransmit")
        if not isinstance(getattr(sender, _SENDER_HISTORY, None), dict):
            raise TypeError("RTCRtpSender has no RTP history dict")
        connection = _ice_connection(dtls.transport)
        if not isinstance(connection._nominated, dict):
            raise TypeError("aioice.Connection._nominated is not a dict")
        if not isinstance(connection._check_list, list) or not callable(
            getattr(connection, "check_state", None)
        ):
            raise TypeError("aioice.Connection has no _check_list or check_state")


_restarted: weakref.WeakSet[CandidatePair] = weakref.WeakSet()  # restarted once already
_aioice_check_incoming = Connection.check_incoming


def _check_incoming(self: Connection, message: Any, addr: tuple[str, int], protocol: Any) -> None:
    for pair in self._check_list:
        if (
            pair.protocol is protocol
            and pair.remote_addr == addr
            and pair.state is CandidatePair.State.IN_PROGRESS
            and pair.task is not None
            and pair not in _restarted
        ):
            # Once per pair: a restart drops the answer to the check in flight, so
            # restarting at every retransmission of the peer could starve a slow path.
            _restarted.add(pair)
            pair.task.cancel()
            pair.task = None
            self.check_state(pair, CandidatePair.State.WAITING)  # aioice starts it now
            break
    _aioice_check_incoming(self, message, addr, protocol)


def restart_checks_on_incoming() -> None:
    """Make aioice send a triggered check at once for an in-progress pair (module docstring).

    Process-wide and idempotent.
    """
    Connection.check_incoming = _check_incoming  # type: ignore[method-assign]
