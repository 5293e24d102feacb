"""Login tokens and sessions of the softphone (virtual time), Host and Origin rules, and the
SDP the node signs for a browser (trimmed to the voice budget, fingerprint kept)."""

from __future__ import annotations

import pytest

from peerphone.daemon.browser_sdp import BROWSER_OPUS_BITRATE_BPS, browser_sdp
from peerphone.daemon.websec import (
    LOGIN_TOKEN_TTL_S,
    MAX_LOGIN_TOKENS,
    MAX_SESSIONS,
    SESSION_IDLE_S,
    UI_PRESENT_S,
    UiSessions,
    host_allowed,
    origin_allowed,
)
from peerphone.errors import DecodeError
from peerphone.media.sdp import sdp_fingerprints


def test_a_login_token_is_single_use() -> None:
    sessions = UiSessions()
    token = sessions.new_login_token(0.0)
    session = sessions.redeem(token, 1.0)
    assert session is not None and sessions.check(session, 2.0)
    assert sessions.redeem(token, 2.0) is None


def test_a_login_token_expires() -> None:
    sessions = UiSessions()
    token = sessions.new_login_token(100.0)
    assert sessions.redeem(token, 100.0 + LOGIN_TOKEN_TTL_S) is None
    fresh = sessions.new_login_token(200.0)
    assert sessions.redeem(fresh, 200.0 + LOGIN_TOKEN_TTL_S - 0.001) is not None


def test_outstanding_tokens_and_sessions_are_bounded() -> None:
    sessions = UiSessions()
    tokens = [sessions.new_login_token(float(i)) for i in range(MAX_LOGIN_TOKENS + 1)]
    assert sessions.redeem(tokens[0], 10.0) is None  # the oldest was forgotten
    ids = [sessions.redeem(sessions.new_login_token(20.0 + i), 20.0 + i) for i in range(40)]
    live = [s for s in ids if sessions.check(s, 100.0)]
    assert len(live) == MAX_SESSIONS and ids[-1] in live


def test_sessions_end_and_idle_out_and_presence_follows_use() -> None:
    sessions = UiSessions()
    session = sessions.redeem(sessions.new_login_token(0.0), 0.0)
    assert sessions.present(UI_PRESENT_S)
    assert not sessions.present(UI_PRESENT_S + 0.1)
    assert sessions.check(session, SESSION_IDLE_S)
    assert not sessions.check(session, 2 * SESSION_IDLE_S + 1)
    other = sessions.redeem(sessions.new_login_token(0.0), 0.0)
    sessions.end(other)
    assert not sessions.check(other, 1.0)
    assert not sessions.check(None, 1.0) and not sessions.check("", 1.0)


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:8080", True),
        ("localhost:8080", True),
        ("[::1]:8080", True),
        ("127.0.0.2:8080", True),
        ("127.0.0.1", False),
        ("127.0.0.1:8081", False),
        ("evil.example:8080", False),
        ("localhost.evil.example:8080", False),
        ("192.0.2.2:8080", False),
        ("127.0.0.1:notaport", False),
        ("", False),
        (None, False),
    ],
)
def test_only_loopback_names_at_our_port_are_our_host(host: str | None, ok: bool) -> None:
    assert host_allowed(host, 8080) is ok


def test_an_origin_must_be_our_own() -> None:
    assert origin_allowed(None, "127.0.0.1:8080")  # the CLI sends none
    assert origin_allowed("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert not origin_allowed("http://evil.example", "127.0.0.1:8080")
    assert not origin_allowed("null", "127.0.0.1:8080")
    assert not origin_allowed("https://127.0.0.1:8080", "127.0.0.1:8080")
    assert not origin_allowed("http://127.0.0.1:8080", None)


CHROME_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=extmap-allow-mixed",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=candidate:1 1 udp 2122260223 192.0.2.2 50000 typ host generation 0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:2 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1;stereo=1",
        "",
    ]
)


def test_the_browser_sdp_is_trimmed_to_mono_voice_without_header_extensions() -> None:
    trimmed = browser_sdp(CHROME_OFFER)
    assert "a=extmap" not in trimmed
    fmtp = [line for line in trimmed.split("\r\n") if line.startswith("a=fmtp:111 ")]
    assert len(fmtp) == 1
    params = dict(p.split("=") for p in fmtp[0].removeprefix("a=fmtp:111 ").split(";"))
    assert params["stereo"] == "0" and params["sprop-stereo"] == "0"
    assert params["maxaveragebitrate"] == str(BROWSER_OPUS_BITRATE_BPS) == "12000"
    assert sdp_fingerprints(trimmed) == sdp_fingerprints(CHROME_OFFER)
    assert "a=candidate:1 1 udp 2122260223 192.0.2.2 50000 typ host" in trimmed
    assert browser_sdp(trimmed) == trimmed  # idempotent


@pytest.mark.parametrize(
    "bad",
    [
        CHROME_OFFER.replace("a=fingerprint:", "a=x-fingerprint:"),  # unbound to the key
        CHROME_OFFER.replace("udp 2122260223 192.0.2.2 50000", "udp"),  # malformed candidate
        CHROME_OFFER + "a=x:" + "y" * 20_000,  # too long to sign
    ],
)
def test_a_browser_sdp_that_cannot_be_bound_or_parsed_is_refused(bad: str) -> None:
    with pytest.raises(DecodeError):
        browser_sdp(bad)
