"""The softphone's doors, attacked over real HTTP against a real node: no credentials, a
login token used twice, DNS rebinding (a foreign Host), cross-site requests (a foreign
Origin, Sec-Fetch-Site), a session trying to mint login tokens. Each must be refused."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerphone.daemon.websec import CONTENT_SECURITY_POLICY, cookie_name
from tests.support.node_procs import Node, NodeProcs, wait_for


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    procs = NodeProcs(tmp_path_factory.mktemp("websec"))
    try:
        sn = procs.start("carol", "--role", "supernode", "--turn-port", "0")
        wait_for("carol online", sn.online)
        yield sn
    finally:
        procs.close()


def request(
    node: Node,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: dict[str, object] | None = None,
) -> http.client.HTTPResponse:
    info = node.control.info
    conn = http.client.HTTPConnection(info["host"], info["port"], timeout=10)
    sent = {"Host": f"{info['host']}:{info['port']}", **(headers or {})}
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=sent)
    response = conn.getresponse()
    response.read()
    return response


def bearer(node: Node) -> dict[str, str]:
    return {"Authorization": f"Bearer {node.control.token}"}


def login(node: Node) -> dict[str, str]:
    """Log in as the page does; the session cookie as a request header."""
    token = node.control.request("POST", "/v1/ui/login-token", {})["token"]
    response = request(node, "GET", f"/login?token={token}")
    assert response.status == 303
    set_cookie = response.headers["Set-Cookie"]
    name = cookie_name(node.control.info["port"])
    value = set_cookie.split(";")[0].removeprefix(f"{name}=")
    return {"Cookie": f"{name}={value}"}


def origin(node: Node) -> str:
    return f"http://{node.control.info['host']}:{node.control.info['port']}"


@pytest.mark.parametrize("path", ["/", "/v1/status", "/v1/ui/ice", "/v1/contacts", "/ui/app.js"])
def test_nothing_is_served_without_a_token_or_session(node: Node, path: str) -> None:
    assert request(node, "GET", path).status == 401
    wrong = {"Cookie": f"{cookie_name(node.control.info['port'])}=forged"}
    assert request(node, "GET", path, wrong).status == 401
    assert request(node, "GET", path, {"Authorization": "Bearer forged"}).status == 401


def test_the_event_socket_refuses_strangers_and_foreign_pages(node: Node) -> None:
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    assert request(node, "GET", "/v1/events", upgrade).status == 401
    hostile = {**upgrade, **login(node), "Origin": "http://evil.example"}
    assert request(node, "GET", "/v1/events", hostile).status == 403
    own = {**upgrade, **login(node), "Origin": origin(node)}
    assert request(node, "GET", "/v1/events", own).status == 101


def test_a_login_token_works_once_and_gives_an_httponly_strict_cookie(node: Node) -> None:
    token = node.control.request("POST", "/v1/ui/login-token", {})["token"]
    first = request(node, "GET", f"/login?token={token}")
    assert first.status == 303 and first.headers["Location"] == "/"
    cookie = first.headers["Set-Cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert request(node, "GET", f"/login?token={token}").status == 401  # used up
    assert request(node, "GET", "/login?token=made-up").status == 401


def test_a_session_can_use_the_page_but_not_mint_login_tokens(node: Node) -> None:
    session = login(node)
    page = request(node, "GET", "/", session)
    assert page.status == 200
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert page.headers["X-Frame-Options"] == "DENY"
    assert request(node, "GET", "/v1/status", session).status == 200
    assert request(node, "POST", "/v1/ui/login-token", session, {}).status == 403


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", ""])
def test_dns_rebinding_a_foreign_host_is_refused_even_with_credentials(
    node: Node, host: str
) -> None:
    forged = {"Host": host.format(port=node.control.info["port"])}
    assert request(node, "GET", "/v1/status", {**bearer(node), **forged}).status == 421
    assert request(node, "GET", "/", {**login(node), **forged}).status == 421


def test_a_cross_site_request_cannot_change_anything(node: Node) -> None:
    session = login(node)
    before = node.status()["status"]
    for hostile in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": origin(node).replace("127.0.0.1", "localhost")},  # another origin too
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        answer = request(node, "POST", "/v1/presence", {**session, **hostile}, {"status": "busy"})
        assert answer.status == 403, hostile
        added = request(node, "POST", "/v1/contacts", {**session, **hostile}, {"name": "mallory"})
        assert added.status == 403
    assert node.status()["status"] == before
    assert all(c["name"] != "mallory" for c in node.control.request("GET", "/v1/contacts"))
    ok = request(
        node, "POST", "/v1/presence", {**session, "Origin": origin(node)}, {"status": "away"}
    )
    assert ok.status == 200
    assert node.status()["status"] == "away"


def test_the_page_assets_ship_inside_the_package() -> None:
    import peerphone.daemon

    ui = Path(peerphone.daemon.__file__).parent / "ui"
    scripts = ["common.js", "lists.js", "calls.js", "app.js"]
    assert {"index.html", "app.css", *scripts} <= {p.name for p in ui.iterdir()}
    page = (ui / "index.html").read_text()
    for name in scripts:
        script = (ui / name).read_text()
        assert "innerHTML" not in script and "insertAdjacentHTML" not in script
        assert f'<script src="/ui/{name}" defer></script>' in page
    assert "<script>" not in page  # no inline script
