"""Reading the parts of an SDP that security and statistics depend on (no I/O, no aiortc);
trimming what our own descriptions offer (`without_rtp_header_extensions`).

The signaling layer signs the whole SDP; the DTLS fingerprints inside it are what bind
the call's encryption to the signer (each aiortc connection makes its own certificate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from peerphone.errors import DecodeError

MAX_SDP_CHARS = 16 * 1024  # as in the signaling messages (overlay/callmsg.py)

# RFC 8122 §5: hash-func SP fingerprint (upper-case hex pairs joined by colons)
_FINGERPRINT_LINE = re.compile(
    r"^a=fingerprint:([A-Za-z0-9-]+) ((?:[0-9A-Fa-f]{2}:)*[0-9A-Fa-f]{2})\s*$", re.MULTILINE
)
_EXTMAP_LINE = re.compile(r"^a=extmap(?:-allow-mixed)?(?::|\r?$)", re.IGNORECASE)
_CANDIDATE_LINE = re.compile(r"^a=candidate:(.*?)\s*$", re.MULTILINE)
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha-256": hashes.SHA256,
    "sha-384": hashes.SHA384,
    "sha-512": hashes.SHA512,
}


def _checked(sdp: str) -> str:
    if len(sdp) > MAX_SDP_CHARS:
        raise DecodeError(f"SDP of {len(sdp)} characters (limit {MAX_SDP_CHARS})")
    return sdp


def sdp_fingerprints(sdp: str) -> list[str]:
    """The DTLS fingerprints in `sdp` as ``"sha-256 AB:CD:…"`` (session and media level).

    Normalised (algorithm lower case, hex upper case), in order, without repeats. An SDP
    without any is refused: such a call could not be bound to its signer.
    """
    found: list[str] = []
    for match in _FINGERPRINT_LINE.finditer(_checked(sdp)):
        fingerprint = f"{match.group(1).lower()} {match.group(2).upper()}"
        if fingerprint not in found:
            found.append(fingerprint)
    if not found:
        raise DecodeError("SDP carries no DTLS fingerprint")
    return found


def certificate_fingerprint(certificate: x509.Certificate, algorithm: str = "sha-256") -> str:
    """A certificate's fingerprint in the form `sdp_fingerprints` returns."""
    hash_type = _HASHES.get(algorithm.lower())
    if hash_type is None:
        raise DecodeError(f"unsupported fingerprint algorithm {algorithm!r}")
    digest = certificate.fingerprint(hash_type()).hex().upper()
    return f"{algorithm.lower()} " + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def certificate_matches(certificate: x509.Certificate, fingerprints: list[str]) -> bool:
    """True when every fingerprint of a known algorithm matches, and there is at least one.

    The same rule aiortc applies during the DTLS handshake (RFC 8122 §5).
    """
    checked = 0
    for fingerprint in fingerprints:
        algorithm = fingerprint.split(" ", 1)[0]
        if algorithm not in _HASHES:
            continue
        checked += 1
        if certificate_fingerprint(certificate, algorithm) != fingerprint:
            return False
    return checked > 0


@dataclass(frozen=True, slots=True)
class Candidate:
    """One ICE candidate line: where a peer can be reached and how (host, srflx, relay)."""

    transport: str
    ip: str
    port: int
    type: str


def sdp_candidates(sdp: str) -> list[Candidate]:
    """The ICE candidates an SDP carries (non-trickle: all of them). Malformed lines: error."""
    candidates = []
    for match in _CANDIDATE_LINE.finditer(_checked(sdp)):
        bits = match.group(1).split()
        # foundation component transport priority ip port "typ" type ...
        if len(bits) < 8 or bits[6] != "typ" or not bits[5].isdigit():
            raise DecodeError(f"malformed candidate line {match.group(0)!r}")
        candidates.append(Candidate(bits[2].lower(), bits[4], int(bits[5]), bits[7]))
    return candidates


def without_rtp_header_extensions(sdp: str) -> str:
    """`sdp` without its ``a=extmap`` (and ``a=extmap-allow-mixed``) lines.

    Used on our own offer and answer before ``setLocalDescription``. aiortc sends a header
    extension only when both descriptions list it (``find_common_header_extensions`` of
    its own list and the remote one), so two peers that both strip them send none: 8
    bytes less on every 20 ms packet (``sdes:mid`` and ``ssrc-audio-level``), 3.2 kbit/s
    per direction. BUNDLE still demultiplexes: with one audio m-line aiortc's receiver
    routes by SSRC (our ``a=ssrc`` line) or payload type, never needing the MID.
    """
    newline = "\r\n" if "\r\n" in sdp else "\n"
    return newline.join(line for line in sdp.split(newline) if _EXTMAP_LINE.match(line) is None)
