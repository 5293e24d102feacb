"""The asyncio adapter on loopback, with aioice's TURN client: no root, no lab.

Loopback is never a permitted peer, so these tests stop at what needs no peer:
Binding, Allocate and its deletion over UDP, over TCP and through the overlay's
`TcpCarrier`, and the relay refusing a loopback peer with 403 end to end.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from aioice import stun as aiostun
from aioice.turn import create_turn_endpoint

from peerphone.nat.credentials import issue_credentials
from peerphone.runtime.tcp_carrier import TcpCarrier
from tests.support.turn_service import (
    HOST,
    SECRET,
    Sink,
    start_service,
)


async def binding(addr: tuple[str, int]) -> tuple[str, int]:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Once(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, _: tuple[str, int]) -> None:
            if not got.done():
                got.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Once, local_addr=(HOST, 0))
    request = aiostun.Message(aiostun.Method.BINDING, aiostun.Class.REQUEST)
    transport.sendto(bytes(request), addr)
    reply = aiostun.parse_message(await asyncio.wait_for(got, 5))
    mapped: tuple[str, int] = reply.attributes["XOR-MAPPED-ADDRESS"]
    assert mapped == transport.get_extra_info("sockname")
    transport.close()
    return mapped


@pytest.mark.parametrize("transport", ["udp", "tcp", "carrier"])
def test_allocate_refuse_loopback_and_delete(transport: str) -> None:
    async def run() -> None:
        service = await start_service()
        udp = await service.listen_udp(HOST, 0)
        await binding(udp)
        carrier = None
        if transport == "udp":
            server = udp
        elif transport == "tcp":
            server = await service.listen_tcp(HOST, 0)
        else:
            carrier = TcpCarrier(
                lambda datagram, addr: None,
                Counter(),
                max_datagram_bytes=1500,
                max_connections=10,
                idle_timeout_s=30.0,
                on_other=service.on_other,
            )
            server = await carrier.listen(HOST, 0)
        creds = issue_credentials(SECRET, "alice", 600, time.time())
        relay, sink = await create_turn_endpoint(
            Sink,
            server,
            creds.username,
            creds.password,
            transport="udp" if transport == "udp" else "tcp",
        )
        relayed = relay.get_extra_info("sockname")
        assert relayed[0] == HOST
        (alloc,) = service.snapshot().allocations
        assert alloc.relayed == relayed
        assert alloc.transport == ("udp" if transport == "udp" else "tcp")
        # a loopback peer is never allowed: ChannelBind gets 403
        relay.sendto(b"to loopback", (HOST, udp[1] + 1))
        for _ in range(100):
            if sink.errors:
                break
            await asyncio.sleep(0.01)
        assert "403" in str(sink.errors[0])
        assert service.stats["refused_peer_loopback"] == 1
        relay.close()  # Refresh with lifetime 0
        for _ in range(100):
            if not service.snapshot().allocations:
                break
            await asyncio.sleep(0.01)
        assert service.snapshot().allocations == ()
        assert service.stats["allocations_deleted"] == 1
        if carrier is not None:
            assert carrier.stats["tcp_handed_over"] == 1
            carrier.close()
        service.close()
        await service.wait_closed()

    asyncio.run(run())


def test_tcp_connection_closing_deletes_the_allocation() -> None:
    async def run() -> None:
        service = await start_service()
        await service.listen_udp(HOST, 0)
        server = await service.listen_tcp(HOST, 0)
        creds = issue_credentials(SECRET, "bob", 600, time.time())
        relay, _ = await create_turn_endpoint(
            Sink, server, creds.username, creds.password, transport="tcp"
        )
        assert len(service.snapshot().allocations) == 1
        relay._TurnTransport__inner_protocol.transport.abort()  # type: ignore[attr-defined]
        for _ in range(100):
            if not service.snapshot().allocations:
                break
            await asyncio.sleep(0.01)
        assert service.stats["allocations_closed_with_connection"] == 1
        service.close()
        await service.wait_closed()

    asyncio.run(run())


def test_garbage_on_tcp_closes_the_connection() -> None:
    async def run() -> None:
        service = await start_service()
        server = await service.listen_tcp(HOST, 0)
        reader, writer = await asyncio.open_connection(*server)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert service.stats["tcp_unframeable"] == 1
        writer.close()
        service.close()
        await service.wait_closed()

    asyncio.run(run())
