"""Who may use the control API from a browser: login tokens, sessions, Host and Origin.

The softphone page is served by the node at its loopback control address. Three doors
are closed here (no I/O, time comes in as `now`):

- **Login.** `peerphone open` (which can read `DIR/control.json`, so it is the owner)
  asks for a login token with the bearer token; the browser trades it, once and within
  `LOGIN_TOKEN_TTL_S`, for a session cookie that is HttpOnly (no script reads it) and
  SameSite=Strict (no other site's page makes the browser send it).
- **DNS rebinding.** A page of `evil.example` whose name resolves to 127.0.0.1 reaches
  the port, but its requests carry `Host: evil.example`: only loopback literals and
  `localhost`, at the port the request arrived on, are served.
- **Cross-site requests.** A browser names the page that made a request in `Origin`
  (always on POST, DELETE and WebSocket): it must be this very origin.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

LOGIN_TOKEN_BYTES = 32
LOGIN_TOKEN_TTL_S = 60.0  # `peerphone open` -> the browser's first request
MAX_LOGIN_TOKENS = 8  # outstanding, unused login tokens (the oldest is forgotten)
SESSION_BYTES = 32
SESSION_IDLE_S = 12 * 3600.0  # a session unused this long is forgotten
MAX_SESSIONS = 16  # browser sessions at once (the least recently used is forgotten)
# A UI session counts as open (the browser is the audio endpoint) while its page has
# been heard from this recently; the page polls every second.
UI_PRESENT_S = 5.0
COOKIE_PREFIX = "peerphone_session_"  # + the port: cookies are per host, not per port

# default-src 'none': nothing that is not named below. No inline script or style at
# all, so text from the network that slipped into markup still could not run.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; media-src 'self' blob: mediastream:; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# Sec-Fetch-Site values a browser sends for requests of our own page or the user's own
# navigation (typed address, bookmark, `peerphone open`)
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})


def cookie_name(port: int) -> str:
    return f"{COOKIE_PREFIX}{port}"


def host_allowed(host_header: str | None, port: int) -> bool:
    """Whether `Host` names this server: a loopback literal or localhost, at `port`."""
    if not host_header:
        return False
    parts = urlsplit(f"//{host_header}")
    try:
        given_port = parts.port
    except ValueError:
        return False
    name = parts.hostname
    if name is None or given_port != port:
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str | None, host_header: str | None) -> bool:
    """Whether a request's `Origin` (None: not sent, as by the CLI) is this server's own."""
    if origin is None:
        return True
    return host_header is not None and origin == f"http://{host_header}"


@dataclass(slots=True)
class _Session:
    last_seen: float


class UiSessions:
    """Login tokens and browser sessions of one node (in memory: a restart logs out)."""

    def __init__(self) -> None:
        self._tokens: dict[str, float] = {}  # token -> expiry
        self._sessions: dict[str, _Session] = {}

    def new_login_token(self, now: float) -> str:
        self._forget_expired(now)
        while len(self._tokens) >= MAX_LOGIN_TOKENS:
            del self._tokens[min(self._tokens, key=self._tokens.__getitem__)]
        token = secrets.token_urlsafe(LOGIN_TOKEN_BYTES)
        self._tokens[token] = now + LOGIN_TOKEN_TTL_S
        return token

    def redeem(self, token: str, now: float) -> str | None:
        """A new session id for a valid, unused login token (which is used up); else None."""
        self._forget_expired(now)
        found = None
        for known in self._tokens:  # compared in constant time, every one
            if hmac.compare_digest(known.encode(), token.encode()):
                found = known
        if found is None:
            return None
        del self._tokens[found]
        while len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda s: self._sessions[s].last_seen)
            del self._sessions[oldest]
        session = secrets.token_urlsafe(SESSION_BYTES)
        self._sessions[session] = _Session(now)
        return session

    def check(self, session: str | None, now: float) -> bool:
        """Whether `session` is a live session (and note that it was just used)."""
        self._forget_expired(now)
        if not session:
            return False
        for known, state in self._sessions.items():
            if hmac.compare_digest(known.encode(), session.encode()):
                state.last_seen = now
                return True
        return False

    def end(self, session: str | None) -> None:
        if session:
            self._sessions.pop(session, None)

    def present(self, now: float) -> bool:
        """Whether a UI page is open right now (heard from within `UI_PRESENT_S`)."""
        return any(now - s.last_seen <= UI_PRESENT_S for s in self._sessions.values())

    def _forget_expired(self, now: float) -> None:
        for token in [t for t, expiry in self._tokens.items() if expiry <= now]:
            del self._tokens[token]
        for session in [s for s, v in self._sessions.items() if now - v.last_seen > SESSION_IDLE_S]:
            del self._sessions[session]
