"""Short-lived TURN credentials (the "TURN REST API" style) and stateless nonces.

A supernode hands its own clients credentials over the authenticated overlay:
``username = "<expiry-unix>:<who>"`` and ``password = base64(HMAC-SHA1(secret, username))``.
The relay needs no table of users: it recomputes the password from the username, and a
username whose expiry has passed (or lies implausibly far ahead) is refused. The STUN
long-term key is then MD5(username ":" realm ":" password) (RFC 8489 section 9.2.2).

Nonces are stateless too, so that a sender that never authenticates costs no memory:
a nonce is 4 characters of HMAC over the time window and the client's IP address; it is
valid in its window and the next one. 4 characters (24 bits) because the 401 challenge
must stay as small as the requests it answers (see `turn.CHALLENGE_BYTES`); a nonce only
limits replays, the password does the authenticating.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from collections import Counter
from dataclasses import dataclass

from aioice.turn import make_integrity_key

from peerphone.errors import LocalProtocolError

REALM = "peer"  # 4 characters: no padding, and a small 401 (the realm is in every one)
MAX_CREDENTIAL_TTL_S = 24 * 3600  # a username expiring later than this is refused
MAX_WHO_CHARS = 128  # the "<who>" part (a user name or a node id)
NONCE_WINDOW_S = 600  # a nonce is valid for 600..1200 s, then 438 (Stale Nonce)
NONCE_CHARS = 4
NONCE_KEY_BYTES = 32
# a user (node) gets a fresh credential at most this often; sooner, the one it has (still
# valid for the TTL minus this: a client asks again a minute before expiry)
MIN_FRESH_CREDENTIAL_INTERVAL_S = 60.0
# users whose last grant is remembered for that; then the oldest is forgotten (it may get
# a fresh one sooner: harmless, quotas are per user)
MAX_REMEMBERED_CREDENTIALS = 10_000


@dataclass(frozen=True, slots=True)
class TurnCredentials:
    """What a client needs to use a supernode's relay until `expires_at` (unix time)."""

    username: str
    password: str
    expires_at: int

    def __post_init__(self) -> None:
        if not self.username or not self.password:
            raise LocalProtocolError("TURN credentials need a username and a password")


def turn_password(secret: bytes, username: str) -> str:
    """The password that goes with `username` under the relay's shared `secret`."""
    digest = hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def issue_credentials(secret: bytes, who: str, ttl_s: float, now: float) -> TurnCredentials:
    """Credentials for `who` (a user or node id, without ':'), valid `ttl_s` from `now`."""
    if not secret:
        raise LocalProtocolError("the TURN secret must not be empty")
    if not who or ":" in who or len(who) > MAX_WHO_CHARS or not who.isprintable():
        raise LocalProtocolError(f"bad TURN user {who!r}: 1..{MAX_WHO_CHARS} printable, no ':'")
    if not 0 < ttl_s <= MAX_CREDENTIAL_TTL_S:
        raise LocalProtocolError(f"TURN credential TTL must be in (0, {MAX_CREDENTIAL_TTL_S}] s")
    expires_at = int(now + ttl_s)
    username = f"{expires_at}:{who}"
    return TurnCredentials(username, turn_password(secret, username), expires_at)


def username_expiry(username: str) -> int | None:
    """The expiry in a "<expiry>:<who>" username, or None when it has none."""
    expiry, sep, who = username.partition(":")
    if not sep or not who or not expiry.isascii() or not expiry.isdigit() or len(expiry) > 12:
        return None
    return int(expiry)


def username_user(username: str) -> str:
    """The "<who>" in a "<expiry>:<who>" username (whom it was issued to), or "" if none.
    Unforgeable once the username authenticated: the password is an HMAC over it."""
    _, sep, who = username.partition(":")
    return who if sep else ""


def long_term_key(secret: bytes, username: str, realm: str, now: float) -> bytes | None:
    """The STUN long-term key for `username`, or None when the username is malformed,
    expired, or expires implausibly far in the future."""
    expiry = username_expiry(username)
    if expiry is None or expiry < now or expiry > now + MAX_CREDENTIAL_TTL_S:
        return None
    return make_integrity_key(username, realm, turn_password(secret, username))


class CredentialIssuer:
    """Issues credentials per user with at most one fresh credential per
    `min_fresh_interval_s`: asking sooner gets the credential already issued, which is still
    valid for at least `ttl_s - min_fresh_interval_s` (issue 8: a fresh username per ask
    made usernames free). The relay's quotas bind to the user anyway (`username_user`);
    this keeps the work and the log of one asking client bounded. Sans-I/O: takes `now`."""

    def __init__(
        self,
        secret: bytes,
        ttl_s: float,
        *,
        min_fresh_interval_s: float = MIN_FRESH_CREDENTIAL_INTERVAL_S,
        max_remembered: int = MAX_REMEMBERED_CREDENTIALS,
        stats: Counter[str] | None = None,
    ) -> None:
        if not 0 <= min_fresh_interval_s < ttl_s:
            raise LocalProtocolError("need 0 <= min_fresh_interval_s < ttl_s")
        if max_remembered <= 0:
            raise LocalProtocolError("max_remembered must be positive")
        self.secret = secret
        self.ttl_s = ttl_s
        self.min_fresh_interval_s = min_fresh_interval_s
        self.max_remembered = max_remembered
        self.stats: Counter[str] = Counter() if stats is None else stats
        self._issued: dict[str, tuple[float, TurnCredentials]] = {}  # who -> (when, what)

    def issue(self, who: str, now: float) -> TurnCredentials:
        """Credentials for `who`: the ones issued less than `min_fresh_interval_s` ago, if
        any, else fresh ones."""
        remembered = self._issued.get(who)
        if remembered is not None:
            issued_at, creds = remembered
            if now - issued_at < self.min_fresh_interval_s and creds.expires_at > now:
                self.stats["credentials_reissued"] += 1
                return creds
            del self._issued[who]
        creds = issue_credentials(self.secret, who, self.ttl_s, now)
        if len(self._issued) >= self.max_remembered:
            self._forget_old(now)
        self._issued[who] = (now, creds)
        self.stats["credentials_issued"] += 1
        return creds

    def _forget_old(self, now: float) -> None:
        """Make room: forget every grant past its fresh interval, else the oldest one."""
        old = [w for w, (t, _) in self._issued.items() if now - t >= self.min_fresh_interval_s]
        for who in old:
            del self._issued[who]
        if len(self._issued) >= self.max_remembered:  # all recent: the oldest goes
            del self._issued[next(iter(self._issued))]
            self.stats["credentials_forgotten_early"] += 1


class NonceMinter:
    """Stateless nonces bound to a client IP and a time window (sans-I/O: takes `now`)."""

    def __init__(self, rng: random.Random) -> None:
        self._key = rng.randbytes(NONCE_KEY_BYTES)

    def _nonce(self, client_ip: str, window: int) -> bytes:
        mac = hmac.new(self._key, f"{window}|{client_ip}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:3])  # 3 bytes -> 4 characters

    def mint(self, client_ip: str, now: float) -> bytes:
        return self._nonce(client_ip, int(now // NONCE_WINDOW_S))

    def valid(self, nonce: bytes, client_ip: str, now: float) -> bool:
        window = int(now // NONCE_WINDOW_S)
        return any(
            hmac.compare_digest(nonce, self._nonce(client_ip, w)) for w in (window, window - 1)
        )
