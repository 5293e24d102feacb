"""The SDP a browser hands the node, trimmed to the voice budget before it is signed.

A browser's Opus encoder follows the fmtp of the *remote* description, so the text the
node signs and passes on decides what the peer's browser sends: mono, at most
`BROWSER_OPUS_BITRATE_BPS`, in-band FEC (a browser decodes it). The ``a=extmap`` lines go
(as `media.sdp.without_rtp_header_extensions` does for aiortc): a browser answers only
the header extensions an offer lists and sends only those both sides listed, so none
travel, 8 to 20 bytes less on every 20 ms packet. Everything else, the DTLS fingerprint
above all, is kept exactly.
"""

from __future__ import annotations

import re

from peerphone.media.sdp import (
    MAX_SDP_CHARS,
    sdp_candidates,
    sdp_fingerprints,
    without_rtp_header_extensions,
)

# 12 kbit/s of Opus in 20 ms frames is ~43 kbit/s per direction as whole IPv6 packets
# (SRTP, UDP, IPv6's 40-byte header; ~35 over IPv4): inside the project's 48 kbit/s voice
# budget on either family (decision 0016; 24 kbit/s was ~53 over IPv6, which Chromium
# picks whenever both ends have an IPv6 address, loopback included).
BROWSER_OPUS_BITRATE_BPS = 12_000
BROWSER_OPUS_FMTP = {
    "minptime": "10",
    "useinbandfec": "1",
    "stereo": "0",
    "sprop-stereo": "0",
    "maxaveragebitrate": str(BROWSER_OPUS_BITRATE_BPS),
}
_RTPMAP_OPUS = re.compile(r"^a=rtpmap:(\d+) opus/48000(?:/\d+)?\s*$", re.IGNORECASE)


def browser_sdp(sdp: str) -> str:
    """`sdp` (from our browser) checked and trimmed for signing; raises DecodeError.

    Refused: longer than the signaling allows, no DTLS fingerprint (the call could not be
    bound to the user key), malformed candidate lines.
    """
    sdp_fingerprints(sdp)  # checks the length too
    sdp_candidates(sdp)
    newline = "\r\n" if "\r\n" in sdp else "\n"
    lines = without_rtp_header_extensions(sdp).split(newline)
    opus = {m.group(1) for line in lines if (m := _RTPMAP_OPUS.match(line)) is not None}
    params = ";".join(f"{key}={value}" for key, value in BROWSER_OPUS_FMTP.items())
    out: list[str] = []
    for line in lines:
        if any(line.startswith(f"a=fmtp:{pt} ") for pt in opus):
            continue  # replaced right after its rtpmap line
        out.append(line)
        match = _RTPMAP_OPUS.match(line)
        if match is not None:
            out.append(f"a=fmtp:{match.group(1)} {params}")
    trimmed = newline.join(out)
    if len(trimmed) > MAX_SDP_CHARS:  # a longer fmtp line could push it over
        sdp_fingerprints(trimmed)
    return trimmed
