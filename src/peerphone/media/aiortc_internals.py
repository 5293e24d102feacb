"""The two things calls need from aiortc/aioice that have no public API, in one place.

* The selected ICE candidate pair (is the call direct or relayed?):
  ``RTCIceTransport._connection`` is the ``aioice.Connection``; its ``_nominated`` maps
  an ICE component to the nominated ``CandidatePair`` (whose ``local_candidate`` and
  ``remote_candidate`` are public). aiortc's stats have no candidate-pair entries.
* The certificate the peer actually used in the DTLS handshake: ``RTCDtlsTransport._ssl``
  is the pyOpenSSL connection. aiortc already refuses a certificate that does not match
  the remote SDP's fingerprints; reading it back lets `MediaSession` check that again
  against the *signed* SDP, so an aiortc regression cannot silently drop the binding.

Both are read-only. The aiortc range in pyproject.toml is the tested one, and
tests/test_media.py fails if an upgrade moves either attribute (`check_internals`).
"""

from __future__ import annotations

from dataclasses import dataclass

from aioice import Candidate as IceCandidate
from aioice.ice import CandidatePair, Connection
from aiortc import RTCDtlsTransport, RTCIceTransport, RTCPeerConnection
from cryptography import x509

ICE_COMPONENT_RTP = 1  # rtcp-mux: everything runs on component 1


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


def check_internals(pc: RTCPeerConnection) -> None:
    """Raise if this aiortc no longer has what the functions above read (a test hook)."""
    transports = _transports(pc)
    if not transports:
        raise TypeError("the peer connection has no transceiver to inspect")
    for dtls in transports:
        if not hasattr(dtls, "_ssl"):
            raise TypeError("RTCDtlsTransport has no _ssl")
        if not isinstance(_ice_connection(dtls.transport)._nominated, dict):
            raise TypeError("aioice.Connection._nominated is not a dict")
