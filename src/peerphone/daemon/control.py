"""The control API: HTTP + WebSocket on loopback, for the CLI and local applications.

Every request carries `Authorization: Bearer TOKEN`; the token is random per start and is
written with the port to `DIR/control.json` (mode 0600), so only the node's owner (who can
read DIR) can drive it. Bodies are JSON and small; errors are JSON `{"error": ...}`.

Two kinds of errors, as everywhere in peerphone. A request the node cannot do is the
client's: it is checked here before it reaches the node (`RequestError`: 400 bad input,
404 unknown call, 409 a call not in the state the action needs), and a refusal from the
node or the network (`PeerphoneError`: a name taken, a call that failed) is a 400 with
its message; a timeout is a 504. Anything else, `LocalProtocolError` included, is our own
bug: a 500 saying only that, and the traceback in the node's log.

    GET    /v1/status                  the node's status (views.status_view)
    GET    /v1/sharing                 what it gives the network, exactly (sharing.py)
    GET    /v1/lookup/{name}           a verified lookup
    GET    /v1/contacts                buddy list with live presence
    POST   /v1/contacts   {"name"}     add a buddy (watched from now on)
    DELETE /v1/contacts/{name}         remove a buddy
    POST   /v1/presence   {"status"}   online | away | busy
    GET    /v1/calls                   calls (and recently ended ones) with statistics
    POST   /v1/calls      {"name", "play", "record"}   place a call (paths on this host)
    GET    /v1/calls/{id}              one call
    POST   /v1/calls/{id}/answer  {"play", "record"}   answer a ringing call
    POST   /v1/calls/{id}/hangup       hang up (cancel, decline)
    POST   /v1/calls/{id}/hold    {"held": true|false}
    POST   /v1/calls/{id}/transfer {"name"}   blind transfer
    GET    /v1/events                  WebSocket: one JSON object per event

The softphone page and its own routes (`/`, `/login`, `/v1/ui/...`), and the Host,
Origin and session checks every request passes, are in `softphone.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import string
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError

from peerphone.daemon.calls import Media
from peerphone.daemon.config import checked_endpoint
from peerphone.daemon.service import NodeService
from peerphone.daemon.softphone import SoftphoneRoutes, UiRequestError, refusal
from peerphone.daemon.websec import UiSessions
from peerphone.errors import LocalProtocolError, PeerphoneError
from peerphone.overlay.callmsg import CALL_ID_BYTES
from peerphone.overlay.calls import CallState
from peerphone.records import Status, valid_username

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4096
# request line and each header field (aiohttp's defaults, named): beyond, a 400
MAX_REQUEST_LINE_BYTES = 8190
MAX_HEADER_FIELD_BYTES = 8190
MAX_HEADERS = 64
# malformed requests (any local user can send them) are logged once per this, counted
MALFORMED_LOG_INTERVAL_S = 10.0
MALFORMED_DETAIL_CHARS = 120  # of the parser's message, which quotes the request
TOKEN_BYTES = 32
SERVICE_KEY = web.AppKey("service", NodeService)
TOKEN_KEY = web.AppKey("token", str)
SESSIONS_KEY = web.AppKey("ui_sessions", UiSessions)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MalformedRequestDigest(logging.Filter):
    """Turns aiohttp's traceback for a request it could not parse (oversized header,
    bad syntax) into one line without traceback, at most once per `interval_s`, counting
    the others; every other record passes unchanged (a bug of ours keeps its traceback)."""

    def __init__(self, interval_s: float = MALFORMED_LOG_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.count = 0  # malformed requests since the last line
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        self.count += 1
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        detail = f"{type(exc).__name__}: {exc.message}"[:MALFORMED_DETAIL_CHARS]
        record.msg, record.args = (
            "refused %d malformed control request(s), last: %s",
            (
                self.count,
                detail,
            ),
        )
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self.count = 0
        return True


http_log = logging.getLogger("peerphone.control.http")  # aiohttp's server log, for us
http_log.addFilter(MalformedRequestDigest())


INTERNAL_ERROR = "internal error (the node's log has the details)"


class RequestError(PeerphoneError):
    """A request the control API refuses: a 4xx `status` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, Origin and credentials (bearer token or the page's session cookie: see
    `softphone.refusal`), and every refusal as a JSON error rather than a traceback."""
    refused = refusal(request, request.app[TOKEN_KEY], request.app[SESSIONS_KEY], time.monotonic())
    if refused is not None:
        return refused
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (RequestError, UiRequestError) as exc:
        return _error(exc.status, str(exc))
    except TimeoutError:
        return _error(504, "the node did not answer in time")
    except LocalProtocolError:  # a request we let through that the node calls misuse
        log.exception("control request %s %s hit a bug", request.method, request.path)
        return _error(500, INTERNAL_ERROR)
    except PeerphoneError as exc:  # refused by the node or the network: the message says why
        return _error(400, str(exc))
    except Exception:
        log.exception("control request %s %s crashed", request.method, request.path)
        return _error(500, INTERNAL_ERROR)


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _bad(f"body larger than {MAX_BODY_BYTES} bytes")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise _bad(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise _bad("body is not JSON") from None
    except RecursionError:  # 4 KiB of brackets nest deeper than the interpreter's stack
        raise _bad("body is nested too deeply") from None
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object")
    return body


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise _bad(f"{key!r}: a string is required")
    return value


async def get_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE_KEY].status())


async def get_sharing(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE_KEY].sharing.view())


def _username(name: str) -> str:
    if not valid_username(name):
        raise _bad(f"{name!r} is not a valid username")
    return name


async def get_lookup(request: web.Request) -> web.Response:
    name = _username(request.match_info["name"])
    return web.json_response(await request.app[SERVICE_KEY].lookup(name))


async def get_contacts(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE_KEY].contact_list())


async def post_contact(request: web.Request) -> web.Response:
    name = _username(_string(await _json_body(request), "name"))
    added = request.app[SERVICE_KEY].add_contact(name)
    return web.json_response({"name": name, "added": added}, status=201 if added else 200)


async def delete_contact(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not request.app[SERVICE_KEY].remove_contact(name):
        return _error(404, f"{name!r} is not a contact")
    return web.json_response({"name": name, "removed": True})


async def post_presence(request: web.Request) -> web.Response:
    text = _string(await _json_body(request), "status")
    try:
        status = Status[text.upper()]
    except KeyError:
        raise _bad(f"status {text!r}: use online, away or busy") from None
    if status is Status.OFFLINE:
        raise _bad("use online, away or busy (a node that runs is not offline)")
    request.app[SERVICE_KEY].set_status(status)
    return web.json_response({"status": status.name.lower()})


def _call_id(request: web.Request) -> bytes:
    """The call id in the path: all of it, or any prefix that only one call has."""
    text = request.match_info["call_id"].lower()
    if not text or len(text) > 2 * CALL_ID_BYTES or text.strip(string.hexdigits):
        raise _bad(f"call id: up to {2 * CALL_ID_BYTES} hex digits expected")
    if len(text) == 2 * CALL_ID_BYTES:
        return bytes.fromhex(text)
    matches = [c for c in request.app[SERVICE_KEY].calls.ids() if c.hex().startswith(text)]
    if not matches:
        raise RequestError(404, f"no call id starts with {text}")
    if len(matches) > 1:
        raise _bad(f"{len(matches)} calls start with {text}: give more of the id")
    return matches[0]


def _media(body: dict[str, Any]) -> Media:
    paths = {}
    for key in ("play", "record"):
        value = body.get(key, "")
        if not isinstance(value, str):
            raise _bad(f"{key!r}: a path (string) is expected")
        if value and not Path(value).is_absolute():
            raise _bad(f"{key!r}: an absolute path is expected")
        paths[key] = value
    if paths["play"] and not Path(paths["play"]).is_file():
        raise _bad(f"{paths['play']}: no such file")
    devices = {}
    for key in ("mic", "speaker"):
        value = body.get(key, False)
        if not isinstance(value, bool):
            raise _bad(f"{key!r}: true or false")
        devices[key] = value
    if (devices["mic"] and paths["play"]) or (devices["speaker"] and paths["record"]):
        raise _bad("'mic' and 'play' (or 'speaker' and 'record'): choose one of each")
    return Media(paths["play"], paths["record"], devices["mic"], devices["speaker"])


async def get_calls(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SERVICE_KEY].calls.list())


async def post_call(request: web.Request) -> web.Response:
    body = await _json_body(request)
    service = request.app[SERVICE_KEY]
    name = _username(_string(body, "name"))
    if name == service.config.name:
        raise _bad("a node cannot call its own name")
    record = await service.calls.place(name, _media(body))
    return web.json_response(await service.calls.view(record.call_id), status=201)


async def _listed(service: NodeService, call_id: bytes) -> bool:
    """Whether the call is one the API shows (live, or ended recently)."""
    return any(view["call_id"] == call_id.hex() for view in await service.calls.list())


async def get_call(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    call_id = _call_id(request)
    if not await _listed(service, call_id):
        raise RequestError(404, "no such call")
    return web.json_response(await service.calls.view(call_id))


# the call state each action needs (the signaling core refuses the others as misuse)
ACTION_STATES = {
    "answer": (CallState.RINGING,),
    "hangup": tuple(CallState),
    "hold": (CallState.ACTIVE,),
    "transfer": (CallState.ACTIVE,),
}


async def post_call_action(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    calls = service.calls
    call_id = _call_id(request)
    action = request.match_info["action"]
    if action not in ACTION_STATES:
        return _error(404, f"no call action {action!r}")
    body = await _json_body(request)
    media = _media(body) if action == "answer" else None
    target = _username(_string(body, "name")) if action == "transfer" else ""
    held = body.get("held", True)
    if not isinstance(held, bool):
        raise _bad("'held': true or false")
    reason = body.get("reason", "hung up")
    if not isinstance(reason, str) or not reason.isprintable() or not 0 < len(reason) <= 60:
        raise _bad("'reason': a short line of text (what the peer is told)")
    # checked last, right before the action: nothing is awaited in between
    call = service.runtime.core.call_snapshot(call_id)
    if call is None:
        if not await _listed(service, call_id):
            raise RequestError(404, "no such call")
        if action != "hangup":
            raise RequestError(409, f"cannot {action} a call that has ended")
    elif call.state not in ACTION_STATES[action] or (action == "answer" and call.outgoing):
        raise RequestError(409, f"cannot {action} a call that is {call.state.value}")
    elif action == "answer":
        assert media is not None
        await calls.answer(call_id, media)
    elif action == "hangup":
        calls.hangup(call_id, reason)
    elif action == "hold":
        calls.hold(call_id, held)
    else:
        calls.transfer(call_id, target)
    return web.json_response(await calls.view(call_id))


async def get_openapi(request: web.Request) -> web.Response:
    """This API described (OpenAPI 3.1), from the package."""
    text = resources.files("peerphone.daemon").joinpath("openapi.json").read_text("utf-8")
    return web.Response(text=text, content_type="application/json")


async def get_events(request: web.Request) -> web.WebSocketResponse:
    service = request.app[SERVICE_KEY]
    queue = service.listen()
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_BODY_BYTES)
    try:
        await ws.prepare(request)
        reader = asyncio.create_task(_drain(ws))
        try:
            while not ws.closed:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                await ws.send_json(getter.result())
        finally:
            reader.cancel()
    finally:
        service.listeners.discard(queue)
    return ws


async def _drain(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the listener sends, until it closes."""
    async for msg in ws:
        if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
            break


def make_app(service: NodeService, token: str) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY_BYTES)
    app[SERVICE_KEY] = service
    app[TOKEN_KEY] = token
    app[SESSIONS_KEY] = UiSessions()
    SoftphoneRoutes(service, app[SESSIONS_KEY]).add_to(app)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/sharing", get_sharing)
    app.router.add_get("/v1/lookup/{name}", get_lookup)
    app.router.add_get("/v1/contacts", get_contacts)
    app.router.add_post("/v1/contacts", post_contact)
    app.router.add_delete("/v1/contacts/{name}", delete_contact)
    app.router.add_post("/v1/presence", post_presence)
    app.router.add_get("/v1/calls", get_calls)
    app.router.add_post("/v1/calls", post_call)
    app.router.add_get("/v1/calls/{call_id}", get_call)
    app.router.add_post("/v1/calls/{call_id}/{action}", post_call_action)
    app.router.add_get("/v1/events", get_events)
    app.router.add_get("/v1/openapi.json", get_openapi)
    return app


async def start_control(service: NodeService) -> web.AppRunner:
    """Serve the control API at the configured loopback address; write DIR/control.json."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    app = make_app(service, token)
    sessions = app[SESSIONS_KEY]
    service.calls.browser_present = lambda: sessions.present(time.monotonic())
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        logger=http_log,
        max_line_size=MAX_REQUEST_LINE_BYTES,
        max_field_size=MAX_HEADER_FIELD_BYTES,
        max_headers=MAX_HEADERS,
    )
    await runner.setup()
    _, (host, port) = checked_endpoint(service.config.control)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:  # bound here, not by aiohttp, to learn the port when 0 was asked
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        await runner.cleanup()
        raise
    await web.SockSite(runner, sock).start()
    bound = sock.getsockname()
    service.data.write_control(
        {
            "host": bound[0],
            "port": bound[1],
            "token": token,
            "pid": service.status()["pid"],
            "node_id": service.status()["node_id"],
        }
    )
    log.info("control API on http://%s:%d", bound[0], bound[1])
    return runner
