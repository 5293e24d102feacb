"""Entry points the TURN interop tests run in separate processes (in lab namespaces)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

TURN_PORT = 3478  # fixed ports: only inside the lab's namespaces

CARRIER_PORT = 443

UCLIENT_TIMEOUT_S = 30

AIORTC_TIMEOUT_S = 60.0


def carrier_relay_main(host: str, secret: str, allow: str) -> None:
    """Run in a lab host: a relay on UDP 3478 and behind a TcpCarrier's TCP port 443."""
    import random

    from peerphone.nat.addrfilter import AddressFilter
    from peerphone.nat.server import TurnService
    from peerphone.nat.turn import TurnServer
    from peerphone.runtime.tcp_carrier import TcpCarrier

    async def serve() -> None:
        core = TurnServer(
            secret.encode(),
            bandwidth_bytes_per_s=1e7,
            now=time.time(),
            rng=random.SystemRandom(),
            address_filter=AddressFilter([allow]),
        )
        service = TurnService(core, host)
        stats: Counter[str] = Counter()
        carrier = TcpCarrier(
            lambda datagram, addr: None,
            stats,
            max_datagram_bytes=1500,
            max_connections=100,
            idle_timeout_s=60.0,
            on_other=service.on_other,
        )
        await carrier.listen(host, CARRIER_PORT)
        await service.listen_udp(host, TURN_PORT)
        print("ready", flush=True)
        await asyncio.sleep(UCLIENT_TIMEOUT_S + 20)

    import uvloop  # as the daemon runs: uvloop's transports must take `set_protocol` too

    uvloop.run(serve())


def aiortc_pair_main(turn_a: list[str], turn_b: list[str]) -> None:
    """Run in a lab host: two aiortc peers, each relay-only through its TURN server
    (`[url, username, password]`), exchange data-channel messages; print a JSON line."""
    from aiortc import (
        RTCConfiguration,
        RTCIceServer,
        RTCIceTransportPolicy,
        RTCPeerConnection,
    )

    def peer(url: str, username: str, password: str) -> RTCPeerConnection:
        server = RTCIceServer(url, username=username, credential=password)
        config = RTCConfiguration([server], iceTransportPolicy=RTCIceTransportPolicy.RELAY)
        return RTCPeerConnection(config)

    async def run() -> dict[str, Any]:
        started = time.monotonic()
        a, b = peer(*turn_a), peer(*turn_b)
        got: asyncio.Queue[str] = asyncio.Queue()
        channel = a.createDataChannel("chat")
        channel.on("message", got.put_nowait)

        @b.on("datachannel")
        def on_channel(remote: Any) -> None:
            remote.on("message", lambda m: remote.send(f"pong {m}"))

        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        @channel.on("open")
        def on_open() -> None:
            if not opened.done():
                opened.set_result(None)

        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.wait_for(opened, AIORTC_TIMEOUT_S)
        connected_s = time.monotonic() - started
        replies = []
        for i in range(5):
            channel.send(f"ping {i}")
            replies.append(await asyncio.wait_for(got.get(), 10))
        pairs: list[list[str] | None] = []
        for pc in (a, b):
            sctp = pc.sctp
            assert sctp is not None
            ice = sctp.transport.transport  # DTLS -> ICE transport
            pair = ice._connection._nominated.get(1)
            if pair is None:
                pairs.append(None)
                continue
            local, remote = pair.local_candidate, pair.remote_candidate
            pairs.append([local.type, local.host, remote.type, remote.host])
        await a.close()
        await b.close()
        return {"connected_s": round(connected_s, 3), "replies": replies, "pairs": pairs}

    print(json.dumps(asyncio.run(run())), flush=True)
