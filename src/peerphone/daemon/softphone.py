"""The softphone page and its API: the node serves a single-page UI at its control address.

    GET  /                               the page (with a session; else how to get one)
    GET  /ui/{common,lists,calls,app}.js its scripts (in that order; no build step, no CDN)
    GET  /ui/app.css                     its style
    GET  /login?token=T                  a one-time login token -> session cookie, to /
    POST /v1/ui/login-token              a login token (bearer only: `peerphone open`)
    POST /v1/ui/logout                   end this browser's session
    GET  /v1/ui/ice                      ICE servers for the page (our supernode's STUN,
                                         short-lived TURN credentials)
    POST /v1/ui/calls  {"name", "sdp", "referred_by"}   call with the page's offer
    POST /v1/ui/calls/{id}/answer {"sdp"}               answer with the page's answer
    GET  /v1/ui/calls/{id}/sdp           the peer's verified SDP ("" until there is one)
    POST /v1/ui/calls/{id}/stats {...}   what the page measured of the call's media

Every request passes `refusal` first (see `websec` for the doors it closes). The rest of
the API (`/v1/status`, `/v1/contacts`, `/v1/events` ...) serves the page with its session
cookie as it serves the CLI with the bearer token.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

from peerphone.daemon.service import NodeService
from peerphone.daemon.websec import (
    ALLOWED_FETCH_SITES,
    SECURITY_HEADERS,
    UiSessions,
    cookie_name,
    host_allowed,
    origin_allowed,
)
from peerphone.errors import PeerphoneError
from peerphone.overlay.callmsg import CALL_ID_BYTES
from peerphone.records import valid_username

MAX_UI_BODY_BYTES = 20 * 1024  # an SDP (16 KiB at most) and its JSON wrapping
ASSETS = {  # served name -> (file in daemon/ui, content type)
    **{
        name: (name, "text/javascript; charset=utf-8")
        for name in ("common.js", "lists.js", "calls.js", "app.js")
    },
    "app.css": ("app.css", "text/css; charset=utf-8"),
}
OPEN_PATHS = frozenset({"/login"})  # reachable without a session (Host still checked)
AUTH_KEY = web.RequestKey("peerphone_auth", str)  # "bearer" or "session"

LOGIN_NEEDED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>peerphone: log in</title></head>
<body><h1>peerphone</h1><p>This browser has no session with this node (or the login link
was already used or is older than a minute). Run <code>peerphone open</code> to log in.</p>
</body></html>
"""


class UiRequestError(PeerphoneError):
    """A softphone request refused with a 4xx `status` (the guard turns it into JSON)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _asset(name: str) -> bytes:
    return (resources.files("peerphone.daemon") / "ui" / name).read_bytes()


def refusal(
    request: web.Request, token: str, sessions: UiSessions, now: float
) -> web.Response | None:
    """Why this request is not served (a response), or None: Host, Origin, credentials.

    Sets ``request[AUTH_KEY]`` to how the request proved itself.
    """
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if sockname else -1
    host = request.headers.get("Host")
    if not host_allowed(host, port):
        return _json_error(421, "this server answers only to its loopback address")
    if not origin_allowed(request.headers.get("Origin"), host):
        return _json_error(403, "cross-origin request refused")
    given = request.headers.get("Authorization", "")
    if given.startswith("Bearer "):
        if hmac.compare_digest(given.removeprefix("Bearer ").encode(), token.encode()):
            request[AUTH_KEY] = "bearer"
            return None
        return _json_error(401, "missing or wrong token (see DIR/control.json)")
    if request.path in OPEN_PATHS:
        return None
    # a session rides on a cookie, which only a browser sends: it says who asks too
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ALLOWED_FETCH_SITES:
        return _json_error(403, "cross-site request refused")
    if sessions.check(request.cookies.get(cookie_name(port)), now):
        request[AUTH_KEY] = "session"
        return None
    if request.method == "GET" and request.path == "/":
        return web.Response(status=401, text=LOGIN_NEEDED_PAGE, content_type="text/html")
    return _json_error(401, "missing or wrong token (see DIR/control.json)")


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every response gets the CSP and its companions."""
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.content.read(MAX_UI_BODY_BYTES + 1)
    if len(raw) > MAX_UI_BODY_BYTES:
        raise UiRequestError(400, f"body larger than {MAX_UI_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise UiRequestError(400, "body is not JSON (or nested too deeply)") from None
    if not isinstance(body, dict):
        raise UiRequestError(400, "body must be a JSON object")
    return body


def _text(body: dict[str, Any], key: str, required: bool = True) -> str:
    value = body.get(key, None if required else "")
    if not isinstance(value, str):
        raise UiRequestError(400, f"{key!r}: a string is required")
    return value


def _name(text: str, service: NodeService) -> str:
    if not valid_username(text):
        raise UiRequestError(400, "not a valid username (letters, digits, . _ -)")
    if text == service.config.name:
        raise UiRequestError(400, "a node cannot call its own name")
    return text


def _call_id(request: web.Request, service: NodeService) -> bytes:
    try:
        call_id = bytes.fromhex(request.match_info["call_id"])
    except ValueError:
        raise UiRequestError(400, "call id: hex digits expected") from None
    if len(call_id) != CALL_ID_BYTES or call_id not in service.calls.ids():
        raise UiRequestError(404, "no such call")
    return call_id


class SoftphoneRoutes:
    """The page and the `/v1/ui/` routes of one node (see the module docstring)."""

    def __init__(
        self,
        service: NodeService,
        sessions: UiSessions,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.sessions = sessions
        self.clock = clock
        self.page = _asset("index.html")
        self.assets = {name: (_asset(file), kind) for name, (file, kind) in ASSETS.items()}

    def add_to(self, app: web.Application) -> None:
        app.on_response_prepare.append(add_security_headers)
        router = app.router
        router.add_get("/", self.index)
        router.add_get("/ui/{name}", self.asset)
        router.add_get("/login", self.login)
        router.add_post("/v1/ui/login-token", self.login_token)
        router.add_post("/v1/ui/logout", self.logout)
        router.add_get("/v1/ui/ice", self.ice)
        router.add_post("/v1/ui/calls", self.place)
        router.add_post("/v1/ui/calls/{call_id}/answer", self.answer)
        router.add_get("/v1/ui/calls/{call_id}/sdp", self.peer_sdp)
        router.add_post("/v1/ui/calls/{call_id}/stats", self.stats)

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(body=self.page, content_type="text/html", charset="utf-8")

    async def asset(self, request: web.Request) -> web.Response:
        found = self.assets.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, kind = found
        return web.Response(body=body, headers={"Content-Type": kind})

    async def login(self, request: web.Request) -> web.Response:
        session = self.sessions.redeem(request.query.get("token", ""), self.clock())
        if session is None:
            return web.Response(status=401, text=LOGIN_NEEDED_PAGE, content_type="text/html")
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            cookie_name(sockname[1] if sockname else 0),
            session,
            httponly=True,
            samesite="Strict",
            path="/",
        )
        raise response

    async def login_token(self, request: web.Request) -> web.Response:
        if request.get(AUTH_KEY) != "bearer":
            raise UiRequestError(403, "login tokens are for the bearer token's holder")
        return web.json_response({"token": self.sessions.new_login_token(self.clock())})

    async def logout(self, request: web.Request) -> web.Response:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        name = cookie_name(sockname[1] if sockname else 0)
        self.sessions.end(request.cookies.get(name))
        response = web.json_response({"logged_out": True})
        response.del_cookie(name, path="/")
        return response

    async def ice(self, request: web.Request) -> web.Response:
        calls = self.service.calls
        calls.refresh_turn()
        return web.json_response({"ice_servers": calls.browser_ice_servers()})

    async def place(self, request: web.Request) -> web.Response:
        body = await _body(request)
        name = _name(_text(body, "name"), self.service)
        referred_by = _text(body, "referred_by", required=False)
        if referred_by and not valid_username(referred_by):
            raise UiRequestError(400, "'referred_by': not a valid username")
        record = self.service.calls.place_browser(name, _text(body, "sdp"), referred_by)
        return web.json_response(await self.service.calls.view(record.call_id), status=201)

    async def answer(self, request: web.Request) -> web.Response:
        call_id = _call_id(request, self.service)
        sdp = _text(await _body(request), "sdp")
        call = self.service.runtime.core.call_snapshot(call_id)
        if call is None or call.outgoing or call.state.value != "ringing":
            raise UiRequestError(409, "only a ringing incoming call can be answered")
        self.service.calls.answer_browser(call_id, sdp)
        return web.json_response(await self.service.calls.view(call_id))

    async def peer_sdp(self, request: web.Request) -> web.Response:
        call_id = _call_id(request, self.service)
        return web.json_response({"sdp": self.service.calls.peer_sdp(call_id)})

    async def stats(self, request: web.Request) -> web.Response:
        call_id = _call_id(request, self.service)
        if not self.service.calls.is_browser(call_id):
            raise UiRequestError(409, "not a call of the softphone page")
        self.service.calls.report_browser_stats(call_id, await _body(request))
        return web.json_response({"ok": True})
