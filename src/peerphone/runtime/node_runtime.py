"""A `NodeCore` on a real UDP socket (and a TCP port): QUIC links, one core timer, events.

The runtime is a thin adapter: it feeds what the links deliver (messages, lost links) and
its single timer into the core, hands what the core returns to the links, and puts the
core's events on `events` for the application. No protocol decision is taken here.

Time: the core gets the loop's monotonic clock shifted once, at `start`, onto the Unix
epoch. Monotonic, so timers never jump; epoch-based, because the core signs absolute
expiries into records that other machines check against their own clocks, and derives
record sequence numbers from `now` so that a restarted node still outranks its last run.

Endpoints in member records: "HOST:PORT" is UDP, "tcp://HOST:PORT" a TCP listener carrying
the same QUIC links (`tcp_carrier`). A node falls back to TCP by itself: the bootstrap TCP
addresses are dialled when no UDP bootstrap address answered within
`TCP_BOOTSTRAP_DELAY_S`, and dials by NodeId move to TCP as `LinkManager` decides.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from peerphone import endpoints
from peerphone.endpoints import Address, Endpoint, endpoint_or_none
from peerphone.errors import DecodeError, LocalProtocolError
from peerphone.identity import KeyPair, NodeId, short
from peerphone.overlay.events import DialBack, Event, LookupDone, ReachDial
from peerphone.overlay.node import NodeCore
from peerphone.records import MemberBody, Record, Status, decode_body
from peerphone.runtime.link import Link, LinkInfo, LinkStats
from peerphone.runtime.link_limits import LinkLimitsConfig
from peerphone.runtime.links import HANDSHAKE_TIMEOUT_S, UDP_ANSWER_TIMEOUT_S, LinkManager
from peerphone.runtime.tcp_carrier import dialled, is_tcp, socket_address
from peerphone.timers import CoreTimer
from peerphone.wire import Message, Send

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_QUEUED_EVENTS = 10_000  # events the application has not taken yet; newer ones dropped
KEEPALIVE_FRACTION = 1 / 3  # client links to primary and backup are pinged this often
DEFAULT_IDLE_TIMEOUT_S = 15.0
# no UDP bootstrap link up by then: dial the TCP bootstrap addresses too (the same
# reasoning as a dial by NodeId: three unanswered Initials mean UDP does not get through)
TCP_BOOTSTRAP_DELAY_S = UDP_ANSWER_TIMEOUT_S
# while not attached, the bootstrap addresses that never answered are dialled again: first
# after this long, then each time twice as long, up to the maximum (a supernode that was
# down when we started is found once it is up, without hammering a wrong address)
BOOTSTRAP_RETRY_FIRST_S = 10.0
BOOTSTRAP_RETRY_MAX_S = 120.0


@dataclass(slots=True)
class BootstrapTry:
    """What became of one bootstrap address: how often it was dialled, who answered."""

    address: str  # as the owner wrote it ("tcp://..." for the TCP carrier)
    tries: int = 0
    last_try: float = 0.0  # loop time
    answered_by: NodeId | None = None

    def waiting(self, now: float) -> bool:
        """Whether the last dial may still be handshaking (no verdict yet)."""
        return self.answered_by is None and now - self.last_try < HANDSHAKE_TIMEOUT_S


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, on uvloop when it is installed (4x the UDP throughput)."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        uvloop = None
    if uvloop is None:
        return asyncio.run(main)
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


class NodeRuntime:
    """Runs one `NodeCore` on a UDP socket at (`host`, `port`) until `stop`.

    With `tcp_listen` it also accepts the same QUIC links over TCP there, and advertises
    "tcp://HOST:PORT" next to its UDP address. `bootstrap` are supernode UDP addresses
    whose NodeIds we do not know, `tcp_bootstrap` TCP ones: the UDP ones are dialled at
    start, the TCP ones if no UDP one answered (see above), and `bootstrap_ids` says who
    answered (a TCP one as its pseudo-address, `tcp_carrier.dialled`). The client core
    attaches to those (the AttachAccept carries the member record); records given in
    `host_cache` (a persisted host cache or a bootstrap file) save that round.
    `link_limits` bounds inbound links per source (`link_limits.LinkLimits`); the runtime
    tells the links which peers are protected from eviction (`NodeCore.protects`).
    """

    def __init__(
        self,
        core: NodeCore,
        keys: KeyPair,
        host: str,
        port: int,
        bootstrap: list[tuple[str, int]],
        *,
        host_cache: Iterable[Record] = (),
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        retry: bool = True,
        tcp_listen: Address | None = None,
        tcp_bootstrap: Iterable[Address] = (),
        link_limits: LinkLimitsConfig | None = None,
    ) -> None:
        if keys.node_id != core.id:
            raise LocalProtocolError("the link keys must be the core's node keys")
        self.core = core
        self.keys = keys
        self.host = host
        self.port = port
        self.bootstrap = list(bootstrap)
        self.tcp_listen = tcp_listen
        self.tcp_bootstrap = list(tcp_bootstrap)
        self.bootstrap_ids: dict[NodeId, Address] = {}  # who answered at each address
        self.host_cache = list(host_cache)
        self.idle_timeout_s = idle_timeout_s
        self.retry = retry
        self.link_limits = link_limits or LinkLimitsConfig()
        self.stats: Counter[str] = Counter()
        # which IPs a dial-back asked by another supernode may go to (the daemon: public
        # ones and its allow list, as the relay; never its own LAN for someone else)
        self.may_dial: Callable[[str], bool] = lambda host: True
        self.events: asyncio.Queue[Event] = asyncio.Queue(MAX_QUEUED_EVENTS)
        self.address: Address | None = None  # bound address, once started
        self.tcp_address: Address | None = None  # bound TCP address, once started
        self._links: LinkManager | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._epoch = 0.0  # added to the loop's clock to give the core's `now`
        self._timer: CoreTimer | None = None  # the core's, once started
        self._keepalive: asyncio.TimerHandle | None = None
        self._tcp_bootstrap_timer: asyncio.TimerHandle | None = None
        self._lookups: dict[int, asyncio.Future[LookupDone]] = {}
        # every bootstrap address (TCP ones as pseudo-addresses) and what became of it
        self.bootstrap_tries: dict[Address, BootstrapTry] = {}
        for addr in self.bootstrap:
            self.bootstrap_tries[addr] = BootstrapTry(endpoints.format_address(addr))
        for addr in self.tcp_bootstrap:
            text = endpoints.format_endpoint(("tcp", addr))
            self.bootstrap_tries[dialled(addr)] = BootstrapTry(text)
        self._bootstrap_retry: asyncio.TimerHandle | None = None
        self._bootstrap_retry_s = BOOTSTRAP_RETRY_FIRST_S

    @property
    def links(self) -> LinkManager:
        if self._links is None:
            raise LocalProtocolError("the runtime is not started")
        return self._links

    def link_to(self, peer: NodeId) -> LinkInfo | None:
        """The authenticated link to `peer` (address, transport), if one is up."""
        return self.links.link_to(peer)

    def link_stats(self) -> LinkStats:
        """How many links are up, open (handshaking too) and up over TCP."""
        return self.links.link_stats()

    def now(self) -> float:
        """The core's clock: the loop's monotonic clock, on the Unix epoch (see above)."""
        return self.loop.time() + self._epoch

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the sockets, learn the host cache, dial the bootstrap addresses."""
        if self._loop is not None:
            raise LocalProtocolError("already started")
        loop = self._loop = asyncio.get_running_loop()
        self._epoch = time.time() - loop.time()
        self._timer = CoreTimer(loop, self._fire, lambda at: at - self._epoch)
        links = LinkManager(
            self.keys,
            self._on_message,
            self._on_link_lost,
            self.stats,
            resolve=self._resolve,
            resolve_tcp=self._resolve_tcp,
            on_link_up=self._on_link_up,
            idle_timeout_s=self.idle_timeout_s,
            retry=self.retry,
            limits=self.link_limits,
            protected=self.core.protects,
            in_tier=self.core.knows_supernode,
        )
        transport, _ = await loop.create_datagram_endpoint(
            lambda: links, local_addr=(self.host, self.port)
        )
        self._links = links
        sockname = transport.get_extra_info("sockname")
        self.address = (sockname[0], sockname[1])
        if self.tcp_listen is not None:
            try:
                self.tcp_address = await links.tcp.listen(*self.tcp_listen)
            except OSError:
                links.close(notify=False)
                raise
        if not self.core.addresses:  # else the caller chose what to advertise
            bound = [("udp", self.address), ("tcp", self.tcp_address)]
            self.core.set_addresses(
                [
                    endpoints.format_endpoint((kind, addr))
                    for kind, addr in bound
                    if addr is not None and not ipaddress.ip_address(addr[0]).is_unspecified
                ]
            )
        self.core.learn_supernodes(self.host_cache, self.now())
        for addr in self.bootstrap:
            self._dial_bootstrap(addr)
        if self.bootstrap_tries:
            self._bootstrap_retry = loop.call_later(self._bootstrap_retry_s, self._retry_bootstrap)
        if self.tcp_bootstrap:
            delay = TCP_BOOTSTRAP_DELAY_S if self.bootstrap else 0.0
            self._tcp_bootstrap_timer = loop.call_later(delay, self._dial_tcp_bootstrap)
        self._keepalive = loop.call_later(self._keepalive_interval(), self._keep_alive)
        self.drive([])

    async def stop(self, notify: bool = True) -> None:
        """Close every link and the socket; the core is left as is.

        With `notify` the peers notice at once (CONNECTION_CLOSE); without, only by their
        idle timeout, as when a node crashes or loses its network.
        """
        if self._timer is not None:
            self._timer.stop()
        for handle in (self._keepalive, self._tcp_bootstrap_timer, self._bootstrap_retry):
            if handle is not None:
                handle.cancel()
        self._keepalive = self._tcp_bootstrap_timer = self._bootstrap_retry = None
        if self._links is not None:
            self._links.close(notify)
            await self._links.tcp.wait_closed()
        for future in self._lookups.values():
            if not future.done():
                future.set_exception(LocalProtocolError("the runtime stopped"))
        self._lookups.clear()
        await asyncio.sleep(0)  # let the transport close

    # -- application API ------------------------------------------------------------------

    def drive(self, sends: Iterable[Send]) -> None:
        """Send what a direct call on the core returned, publish its events, re-arm its timer.

        Call it after touching the core yourself (e.g. `become_supernode`), even with [].
        """
        out: list[Send] = []
        for dest, msg in sends:
            if dest == self.core.id:  # the client role talking to our own supernode role
                self.loop.call_soon(self._on_message, dest, msg)
            else:
                out.append((dest, msg))
        self.links.send_many(out)
        for event in self.core.pop_events():
            if isinstance(event, DialBack):
                self._dial_back(NodeId(event.node), event.address)
                continue
            if isinstance(event, ReachDial):
                self._reach_dial(event)
                continue
            if isinstance(event, LookupDone) and event.req in self._lookups:
                waiter = self._lookups.pop(event.req)
                if not waiter.done():
                    waiter.set_result(event)
                continue
            try:
                self.events.put_nowait(event)
            except asyncio.QueueFull:
                self.stats["events_dropped"] += 1
        self._arm_timer()

    def _dial_back(self, node: NodeId, address: str) -> None:
        """Reach a joining supernode at the address its record gives; the core admits it
        only if it answers there as itself."""

        def done(reached: bool) -> None:
            self.drive(self.core.dial_back_done(node, reached, self.now()))

        endpoint = endpoint_or_none(address)
        if endpoint is None:
            self.loop.call_soon(done, False)
            return
        kind, addr = endpoint
        probe = self.links.probe(dialled(addr) if kind == "tcp" else addr, node)
        probe.add_done_callback(lambda result: done(result.result()))

    def _reach_dial(self, dial: ReachDial) -> None:
        """Dial a candidate back for another supernode, on UDP and TCP at once, from our
        own sockets; decline when we are linked to it (its NAT would let us in)."""
        node, asker = NodeId(dial.node), NodeId(dial.asker)

        def report(reached: bool, declined: bool, reason: str) -> None:
            now = self.now()
            self.drive(self.core.reach_dial_done(asker, dial.req, reached, declined, reason, now))

        if self.links.link_to(node) is not None:
            self.loop.call_soon(report, False, True, "linked to it already")
            return
        targets: list[tuple[str, Address]] = []
        for text in (dial.udp, dial.tcp):
            endpoint = endpoint_or_none(text) if text else None
            if endpoint is not None:
                kind, addr = endpoint
                if not self.may_dial(addr[0]):
                    self.loop.call_soon(report, False, True, "not an address we dial")
                    return
                targets.append((kind, dialled(addr) if kind == endpoints.TCP else addr))
        # each connection must carry back a nonce of its own (ReachProbe -> ReachEcho)
        probes = [self.links.probe(addr, node, os.urandom(16)) for _, addr in targets]
        if not probes or all(p.done() and not p.result() for p in probes):
            self.loop.call_soon(report, False, True, "no room for a link")  # said at once
            return

        def settled(_: object) -> None:
            if not all(p.done() for p in probes):
                return
            failed = [kind for (kind, _), p in zip(targets, probes, strict=True) if not p.result()]
            if failed:
                report(False, False, "not reached over " + " and ".join(k.upper() for k in failed))
            else:
                report(True, False, "reached over " + " and ".join(k.upper() for k, _ in targets))

        for probe in probes:
            probe.add_done_callback(settled)

    def login(self) -> None:
        self.drive(self.core.login(self.now()))

    def logout(self) -> None:
        self.drive(self.core.logout(self.now()))

    def set_status(self, status: Status) -> None:
        self.drive(self.core.set_status(status, self.now()))

    def watch(self, usernames: list[str]) -> None:
        self.drive(self.core.watch(usernames, self.now()))

    async def lookup(self, username: str, timeout_s: float) -> LookupDone:
        """Look `username` up; TimeoutError if the core has not answered within `timeout_s`.

        The core gives up by itself after `ClientConfig.lookup_deadline_s` (a LookupDone
        with reason "timeout"); `timeout_s` only bounds the wait of this caller.
        """
        req, sends = self.core.lookup(username, self.now())
        waiter: asyncio.Future[LookupDone] = self.loop.create_future()
        self._lookups[req] = waiter
        self.drive(sends)
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        finally:
            self._lookups.pop(req, None)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise LocalProtocolError("the runtime is not started")
        return self._loop

    # -- inputs from the links ------------------------------------------------------------

    def _on_message(self, peer: NodeId, msg: Message) -> None:
        self.drive(self.core.receive(msg, peer, self.now()))

    def _on_link_lost(self, peer: NodeId) -> None:
        self.drive(self.core.connection_lost(peer, self.now()))

    def _on_link_up(self, peer: NodeId, link: Link) -> None:
        host, port = socket_address(link.addr)
        udp_port = None if is_tcp(link.addr) else port
        self.drive(self.core.link_up(peer, host, self.now(), udp_port))
        if link.bootstrap:  # a bootstrap address answered: the client may attach there
            self.bootstrap_ids[peer] = link.addr
            tried = self.bootstrap_tries.get(link.addr)
            if tried is not None:
                tried.answered_by = peer
            if self.core.supernode_record(peer) is None:
                self.stats["bootstrap_without_record"] += 1
                log.info("bootstrap %s is %s; no member record yet", link.addr, short(peer))
            self.drive(self.core.learn_bootstrap([peer], self.now()))

    def _dial_tcp_bootstrap(self) -> None:
        self._tcp_bootstrap_timer = None
        if any(not is_tcp(addr) for addr in self.bootstrap_ids.values()):
            return  # UDP gets through
        if self.bootstrap:
            self.stats["bootstrap_tcp_fallback"] += 1
        for addr in self.tcp_bootstrap:
            self._dial_bootstrap(dialled(addr))

    def _dial_bootstrap(self, addr: Address) -> None:
        tried = self.bootstrap_tries.get(addr)
        if tried is not None:
            tried.tries += 1
            tried.last_try = self.loop.time()
        self.links.dial_address(addr)

    def _retry_bootstrap(self) -> None:
        """Not attached yet: dial again the bootstrap addresses that never answered."""
        self._bootstrap_retry = None
        if self.core.attached()[0] is not None:
            self._bootstrap_retry_s = BOOTSTRAP_RETRY_FIRST_S
        else:
            udp_answered = any(not is_tcp(addr) for addr in self.bootstrap_ids.values())
            for addr, tried in self.bootstrap_tries.items():
                if tried.answered_by is None and not (udp_answered and is_tcp(addr)):
                    self.stats["bootstrap_retries"] += 1
                    self._dial_bootstrap(addr)
            self._bootstrap_retry_s = min(2 * self._bootstrap_retry_s, BOOTSTRAP_RETRY_MAX_S)
        self._bootstrap_retry = self.loop.call_later(self._bootstrap_retry_s, self._retry_bootstrap)

    def _resolve(self, peer: NodeId) -> Address | None:
        """Where to dial `peer`: the first UDP endpoint of the member record the core
        holds, else its first TCP one (as a pseudo-address)."""
        endpoints = self._endpoints(peer)
        if endpoints is None:
            return self.bootstrap_ids.get(peer)  # known only as "who answered there"
        udp = [addr for kind, addr in endpoints if kind == "udp"]
        return udp[0] if udp else self._resolve_tcp(peer)

    def _resolve_tcp(self, peer: NodeId) -> Address | None:
        """The first TCP endpoint of `peer`'s member record, as a pseudo-address."""
        tcp = [addr for kind, addr in self._endpoints(peer) or [] if kind == "tcp"]
        return dialled(tcp[0]) if tcp else None

    def _endpoints(self, peer: NodeId) -> list[Endpoint] | None:
        """The endpoints in `peer`'s member record (None: the core holds no record)."""
        record = self.core.supernode_record(peer)
        if record is None:
            return None
        try:
            body = decode_body(record)
        except DecodeError:
            return []
        if not isinstance(body, MemberBody):
            return []
        parsed = (endpoint_or_none(text) for text in body.addresses)
        return [endpoint for endpoint in parsed if endpoint is not None]

    # -- time -----------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.arm(self.core.next_timer())

    def _fire(self) -> None:
        assert self._timer is not None
        now = self._timer.due(self.now())
        try:
            self.drive(self.core.handle_timer(now))
        except Exception:
            self.stats["internal_errors"] += 1
            log.exception("core timer crashed")

    def _keepalive_interval(self) -> float:
        return self.idle_timeout_s * KEEPALIVE_FRACTION

    def _keep_alive(self) -> None:
        self.links.keep_alive(n for n in self.core.attached() if n is not None)
        self._keepalive = self.loop.call_later(self._keepalive_interval(), self._keep_alive)
