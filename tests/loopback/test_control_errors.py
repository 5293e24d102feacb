"""The control API's two kinds of errors, on the app itself with a stand-in node: what
the client got wrong is a 4xx with the reason (checked before the node is asked); our
own bug (`LocalProtocolError` or anything unexpected) is a 500 that says only that, with
the traceback in the log and none in the answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer

from peerphone.daemon.control import INTERNAL_ERROR, make_app
from peerphone.daemon.service import NodeService
from peerphone.errors import LocalProtocolError, PeerphoneError
from peerphone.overlay.calls import CallState

TOKEN = "t" * 16
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
RINGING_IN = bytes(16)
RINGING_OUT = bytes([1]) * 16
ACTIVE = bytes([2]) * 16


@dataclass
class FakeCalls:
    """The CallManager surface the API uses; records what it was asked."""

    done: list[str] = field(default_factory=list)

    async def list(self) -> list[dict[str, Any]]:
        return [{"call_id": c.hex()} for c in (RINGING_IN, RINGING_OUT, ACTIVE)]

    async def view(self, call_id: bytes) -> dict[str, Any]:
        return {"call_id": call_id.hex()}

    async def answer(self, call_id: bytes, media: object) -> None:
        self.done.append("answer")

    def hangup(self, call_id: bytes, reason: str = "hung up") -> None:
        self.done.append("hangup")

    def ids(self) -> tuple[bytes, ...]:
        return (RINGING_IN, RINGING_OUT, ACTIVE)

    def hold(self, call_id: bytes, held: bool) -> None:
        self.done.append("hold")

    def transfer(self, call_id: bytes, target: str) -> None:
        self.done.append("transfer")


class FakeService:
    """A node that answers the API from canned data, or fails as told."""

    def __init__(self) -> None:
        self.calls = FakeCalls()
        self.config = SimpleNamespace(name="alice")
        self.fail: BaseException | None = None
        self.looked_up: list[str] = []
        snapshots = {
            RINGING_IN: SimpleNamespace(state=CallState.RINGING, outgoing=False),
            RINGING_OUT: SimpleNamespace(state=CallState.RINGING, outgoing=True),
            ACTIVE: SimpleNamespace(state=CallState.ACTIVE, outgoing=True),
        }
        self.runtime = SimpleNamespace(core=SimpleNamespace(call_snapshot=snapshots.get))

    def status(self) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        return {"ok": True}

    async def lookup(self, name: str) -> dict[str, Any]:
        self.looked_up.append(name)
        return {"name": name}


def run_with_client(
    service: FakeService, test: Callable[[TestClient[Any, Any]], Awaitable[None]]
) -> None:
    async def main() -> None:
        app = make_app(cast(NodeService, service), TOKEN)
        async with TestClient(TestServer(app)) as client:
            await test(client)

    asyncio.run(main())


async def answer(
    client: TestClient[Any, Any], method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    response = await client.request(method, path, headers=HEADERS, json=body)
    return response.status, await response.json()


@pytest.mark.parametrize(
    "bug",
    [LocalProtocolError("the node is not started"), KeyError("x"), ValueError("int('x')")],
)
def test_our_own_bugs_are_a_500_with_the_traceback_in_the_log_only(
    bug: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    service = FakeService()
    service.fail = bug

    async def test(client: TestClient[Any, Any]) -> None:
        status, body = await answer(client, "GET", "/v1/status")
        assert (status, body) == (500, {"error": INTERNAL_ERROR})

    with caplog.at_level(logging.ERROR, logger="peerphone.daemon.control"):
        run_with_client(service, test)
    crashes = [r for r in caplog.records if r.exc_info and r.exc_info[1] is bug]
    assert len(crashes) == 1 and "GET /v1/status" in crashes[0].getMessage()


def test_a_refusal_from_the_node_or_the_network_is_a_400_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = FakeService()
    service.fail = PeerphoneError("the name is taken")

    async def test(client: TestClient[Any, Any]) -> None:
        assert await answer(client, "GET", "/v1/status") == (
            400,
            {"error": "the name is taken"},
        )

    run_with_client(service, test)
    assert not [r for r in caplog.records if r.exc_info]


def test_bad_requests_are_refused_before_the_node_is_asked() -> None:
    service = FakeService()

    async def test(client: TestClient[Any, Any]) -> None:
        status, body = await answer(client, "GET", "/v1/lookup/NOT%20VALID")
        assert (status, body) == (400, {"error": "'NOT VALID' is not a valid username"})
        assert (await answer(client, "POST", "/v1/contacts", {"name": "Bad Name"}))[0] == 400
        assert (await answer(client, "POST", "/v1/presence", {"status": "offline"}))[0] == 400
        assert (await answer(client, "POST", "/v1/calls", {"name": "alice"}))[0] == 400
        assert (await answer(client, "POST", "/v1/calls", {"name": "x y"}))[0] == 400
        assert service.looked_up == []
        assert (await answer(client, "GET", "/v1/lookup/bob")) == (200, {"name": "bob"})

    run_with_client(service, test)


def test_call_actions_need_a_known_call_in_the_right_state() -> None:
    service = FakeService()
    calls = service.calls

    async def test(client: TestClient[Any, Any]) -> None:
        unknown = (bytes([9]) * 16).hex()
        assert await answer(client, "GET", f"/v1/calls/{unknown}") == (
            404,
            {"error": "no such call"},
        )
        assert (await answer(client, "POST", f"/v1/calls/{unknown}/hangup"))[0] == 404
        assert (await answer(client, "POST", f"/v1/calls/{ACTIVE.hex()}/answer"))[0] == 409
        assert (await answer(client, "POST", f"/v1/calls/{RINGING_OUT.hex()}/answer"))[0] == 409
        status, body = await answer(client, "POST", f"/v1/calls/{RINGING_IN.hex()}/hold")
        assert (status, body) == (409, {"error": "cannot hold a call that is ringing"})
        path = f"/v1/calls/{ACTIVE.hex()}/transfer"
        assert (await answer(client, "POST", path, {"name": "Not Valid"}))[0] == 400
        assert calls.done == []
        assert (await answer(client, "POST", f"/v1/calls/{RINGING_IN.hex()}/answer"))[0] == 200
        assert (await answer(client, "POST", f"/v1/calls/{ACTIVE.hex()}/hold"))[0] == 200
        assert (await answer(client, "POST", path, {"name": "carol"}))[0] == 200
        assert (await answer(client, "POST", f"/v1/calls/{RINGING_OUT.hex()}/hangup"))[0] == 200
        assert calls.done == ["answer", "hold", "transfer", "hangup"]

    run_with_client(service, test)


def test_a_call_id_prefix_names_the_one_call_that_has_it() -> None:
    service = FakeService()

    async def test(client: TestClient[Any, Any]) -> None:
        unique = ACTIVE.hex()[:6]
        status, body = await answer(client, "GET", f"/v1/calls/{unique}")
        assert status == 200, body
        assert (await answer(client, "POST", f"/v1/calls/{unique}/hangup"))[0] == 200
        status, body = await answer(client, "GET", "/v1/calls/ffffff")
        assert (status, body) == (404, {"error": "no call id starts with ffffff"})
        status, body = await answer(client, "GET", "/v1/calls/0")  # all three start so
        assert (status, body) == (400, {"error": "3 calls start with 0: give more of the id"})
        assert (await answer(client, "GET", "/v1/calls/xyz"))[0] == 400

    run_with_client(service, test)
