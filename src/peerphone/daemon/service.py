"""`peerphone node`: one user's node as a long-running process.

`NodeService` owns the core, its runtime and the data directory. It starts the node (role,
login, buddy watches), turns the core's events into state the control API reports and into
JSON events for its WebSocket listeners, saves the host cache and contacts, and shuts down
gracefully: a supernode hands its records and clients over before it leaves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import random
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from peerphone.daemon.calls import CallManager
from peerphone.daemon.config import ConfigError, NodeConfig, checked_endpoint, resolve_bootstrap
from peerphone.daemon.datadir import Contact, DataDir
from peerphone.daemon.duty_keeper import DutyKeeper, client_reason, consents
from peerphone.daemon.logs import ErrorDigest
from peerphone.daemon.measure import Measurements, log_promotion_check
from peerphone.daemon.pins import Pins
from peerphone.daemon.policy import Policy
from peerphone.daemon.relay import Relay
from peerphone.daemon.sharing import Sharing
from peerphone.daemon.views import error_counters, lookup_view, presence_view, status_view
from peerphone.endpoints import (
    Endpoint,
    endpoint_or_none,
    format_address,
    format_endpoint,
    route_source,
)
from peerphone.errors import LocalProtocolError, PeerphoneError
from peerphone.identity import KeyPair, SignatureVerifier, short
from peerphone.nat.addrfilter import AddressFilter
from peerphone.overlay.client import ClientState
from peerphone.overlay.events import (
    Attached,
    AttachLost,
    CallAnswered,
    CallEnded,
    CallHoldChanged,
    CallIncoming,
    CallRinging,
    CallTransferRequested,
    Event,
    KeyChanged,
    KeyPinned,
    PresenceChanged,
    PromotionChecked,
    Published,
    PublishRefused,
    RoleChanged,
)
from peerphone.overlay.membership import MembershipConfig
from peerphone.overlay.node import NodeCore
from peerphone.overlay.supernode import SupernodeConfig
from peerphone.records import Status, valid_username
from peerphone.runtime.node_runtime import NodeRuntime
from peerphone.wire import ReasonCode

log = logging.getLogger("peerphone.node")
CALL_EVENTS = (
    CallIncoming,
    CallRinging,
    CallAnswered,
    CallEnded,
    CallHoldChanged,
    CallTransferRequested,
)

HOST_CACHE_SAVE_S = 60.0  # how often the host cache is written while running
HOUSEKEEPING_S = 5.0  # error digest, capacity refresh
SHUTDOWN_GRACE_S = 1.0  # after logout, time for hand-over and OFFLINE to be delivered
LOOKUP_TIMEOUT_S = 10.0
# A silent link is declared dead after this long (QUIC idle timeout; keep-alives go out at a
# third of it). 6 s: a client notices a crashed supernode and is on its backup within 10 s
# (8 s measured ~9 s, too close), at the cost of a keep-alive exchange every 2 s per client.
LINK_IDLE_TIMEOUT_S = 6.0
MAX_LISTENERS = 32  # WebSocket event listeners
LISTENER_QUEUE = 1_000  # events buffered per listener; a slow listener loses the oldest
LISTENER_GOODBYE_S = 0.2  # for the "NodeStopping" event to reach listeners before they close
# not attached: said in the log once the first handshakes had their time, again when the
# reason changes, and at most this often while it stays the same
ATTACH_WARN_AFTER_S = 8.0
ATTACH_WARN_REPEAT_S = 60.0
# our supernode runs no relay: ask it again at most this often (it may start one later)
NO_RELAY_RETRY_S = 60.0
EXIT_NAME_TAKEN = 3


class NameTaken(PeerphoneError):
    """The name this node tried to register belongs to another user key."""


class NodeService:
    """A running node: core + runtime + data directory, driven by the control API."""

    def __init__(self, data: DataDir, config: NodeConfig, policy: Policy | None = None) -> None:
        config.check()
        self.data = data
        self.config = config
        self.policy = policy  # managed mode (daemon/policy.py), already applied to config
        self.node_keys: KeyPair | None = None
        self.user_keys: KeyPair | None = None
        self.first_start = False
        self.registered = False
        self.fatal: PeerphoneError | None = None
        self.started_at = time.time()
        self.role_reason = ""
        self.contacts: dict[str, Contact] = {}
        self.key_changes: dict[str, bytes] = {}  # name -> the key seen instead of the pin
        self.listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        # the control API's task serving each listener: cancelled when the node stops
        self._listener_tasks: dict[asyncio.Queue[dict[str, Any]], asyncio.Task[Any]] = {}
        self.bootstrap_problems: list[str] = []  # bootstrap names that did not resolve
        self._attach_warned: tuple[str, float] = ("", 0.0)  # last warning and when
        self._turn_asked = 0.0  # monotonic: when our supernode was last asked for a relay
        self.stopping = asyncio.Event()
        self._runtime: NodeRuntime | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._digest = ErrorDigest(log)
        self.calls = CallManager(config, lambda: self.runtime)
        self.relay = Relay(config, lambda: self.runtime)
        self.sharing = Sharing(self)  # what it gives the network: `peerphone sharing`
        self.duty = DutyKeeper(self)  # the owner's caps on it (daemon/duty.py)
        self.sharing.after_sample, self.sharing.duty_view = self.duty.tick, self.duty.view
        self.pins = Pins(data.path)
        if policy is not None:  # calls to and from users outside its allow-list: refused
            self.calls.refusal = lambda name: policy.call_refusal(name, self.core.pins().get(name))

    @property
    def runtime(self) -> NodeRuntime:
        if self._runtime is None:
            raise LocalProtocolError("the node is not started")
        return self._runtime

    @property
    def core(self) -> NodeCore:
        return self.runtime.core

    # -- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self.data.create()
        # session history, upload, spare CPU: what we report is measured, never claimed
        self.measure = Measurements(self.data.path, lambda: bool(self.calls.calls), time.time())
        node_keys, user_keys, self.first_start = self.data.keys()
        self.node_keys, self.user_keys = node_keys, user_keys
        self.contacts = {c.name: c for c in self.data.load_contacts()}
        trusted = self.pins.load()  # before any socket: a damaged file stops us here
        core = self._make_core(node_keys, user_keys, trusted)
        endpoints = self._bootstrap_endpoints()
        runtime = self._make_runtime(core, node_keys, endpoints)
        runtime.may_dial = AddressFilter(cfg.relay_allow).allows  # dial-backs: as the relay
        self._runtime = runtime
        await runtime.start()
        self._advertise(runtime, endpoints)
        core.set_capacity(self.measure.report(runtime, cfg.share))  # with our ports
        self._take_role(core, runtime)
        runtime.login()
        if self.contacts:
            runtime.watch(sorted(self.contacts))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        self._tasks = [
            asyncio.create_task(self._pump(), name="events"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
            asyncio.create_task(self.sharing.run(), name="sharing"),
        ]
        log.info(
            "node %s (user %s) started as %s on %s",
            short(node_keys.node_id),
            cfg.name,
            cfg.role,
            ", ".join(core.addresses) or format_address(runtime.address or ("?", 0)),
            extra={"fields": {"node_id": node_keys.node_id.hex(), "first_start": self.first_start}},
        )
        for note in [self.policy.describe(), *self.policy.overridden] if self.policy else []:
            log.warning("%s", note)

    def _bootstrap_endpoints(self) -> list[Endpoint]:
        """The bootstrap list with DNS names resolved; a name that does not resolve is
        logged and shown by status, the others are used."""
        found: list[Endpoint] = []
        for text in self.config.bootstrap:
            try:
                resolved = resolve_bootstrap(text)
            except ConfigError as exc:
                self.bootstrap_problems.append(str(exc))
                log.error("%s", exc)
                continue
            if endpoint_or_none(text) is None:  # a DNS name
                shown = ", ".join(map(format_endpoint, resolved))
                log.info("bootstrap %s resolved to %s", text, shown)
            found.extend(endpoint for endpoint in resolved if endpoint not in found)
        return found

    def _make_core(
        self, node_keys: KeyPair, user_keys: KeyPair, trusted: dict[str, bytes]
    ) -> NodeCore:
        """The node's core, with our keys, sharing limits, device and trusted keys."""
        cfg = self.config
        core = NodeCore(
            node_keys,
            user_keys,
            cfg.name,
            random.SystemRandom(),
            SignatureVerifier(),
            capacity=self.measure.report(None, cfg.share),
            supernode_config=SupernodeConfig(
                max_clients=cfg.share.max_clients,
                max_backups=2 * cfg.share.max_clients,
                membership=MembershipConfig(dial_back=True),  # joiners are dialled back
                election=cfg.election(),  # and candidates, before a promotion
            ),
            may_serve=consents(cfg, self.policy),
        )
        if self.policy is not None:  # never serves; attaches only to the listed supernodes
            core.restrict_supernodes(self.policy.node_ids())
        core.set_device(cfg.device)
        core.pin(trusted)
        core.pin({c.name: c.key for c in self.contacts.values() if c.key is not None})
        return core

    def _make_runtime(
        self, core: NodeCore, node_keys: KeyPair, endpoints: list[Endpoint]
    ) -> NodeRuntime:
        """The runtime on our sockets, bootstrapping from `endpoints`."""
        cfg = self.config
        _, (host, port) = checked_endpoint(cfg.listen)
        tcp_listen = checked_endpoint(cfg.tcp_listen, "tcp")[1] if cfg.tcp_listen else None
        return NodeRuntime(
            core,
            node_keys,
            host,
            port,
            [addr for kind, addr in endpoints if kind == "udp"],
            host_cache=self.data.load_host_cache(),
            idle_timeout_s=LINK_IDLE_TIMEOUT_S,
            tcp_listen=tcp_listen,
            tcp_bootstrap=[addr for kind, addr in endpoints if kind == "tcp"],
            link_limits=cfg.link_limits(),
        )

    def _take_role(self, core: NodeCore, runtime: NodeRuntime) -> None:
        """A configured supernode serves at once; otherwise say why we are a client."""
        if self.config.role == "supernode":
            self.duty.serve("configured: --role supernode")
        else:
            self.role_reason = client_reason(self.config, self.policy)

    def _advertise(self, runtime: NodeRuntime, endpoints: list[Endpoint]) -> None:
        """What member and presence records tell others to dial: UDP first, then TCP.

        A socket bound to 0.0.0.0 is advertised under the address the kernel routes
        toward the first bootstrap host (nothing at all if there is none: a client is
        still reachable over the links it opens itself).
        """
        route = None
        advertised: list[str] = []
        for kind, bound in (("udp", runtime.address), ("tcp", runtime.tcp_address)):
            if bound is None:
                continue
            host = bound[0]
            if ipaddress.ip_address(host).is_unspecified:
                route = route or route_source(endpoints)
                if route is None:
                    continue
                host = route
            advertised.append(format_endpoint((kind, (host, bound[1]))))
        runtime.core.set_addresses(advertised)

    def exit_status(self) -> int:
        if isinstance(self.fatal, NameTaken):
            return EXIT_NAME_TAKEN
        return 1 if self.fatal is not None else 0

    async def shutdown(self) -> None:
        runtime = self.runtime
        was_supernode = self.core.is_supernode
        log.info("shutting down%s", " (handing records and clients over)" if was_supernode else "")
        await self.calls.close()
        await self.relay.stop()
        if self.core.snapshot().state is not ClientState.OFFLINE:
            runtime.logout()
        await asyncio.sleep(SHUTDOWN_GRACE_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._save_host_cache()
        self.measure.save(time.time())
        self.data.save_contacts(list(self.contacts.values()))
        await runtime.stop(notify=True)
        log.info("stopped")

    # -- events -----------------------------------------------------------------------------

    async def _pump(self) -> None:
        events = self.runtime.events
        while True:
            event = await events.get()
            try:
                self._on_event(event)
            except Exception:  # a bug in our bookkeeping must not stop the event pump
                self.runtime.stats["internal_errors"] += 1
                log.exception("handling %s failed", type(event).__name__)

    def _on_event(self, event: Event) -> None:
        out: dict[str, Any] = {"type": type(event).__name__, "ts": time.time()}
        if self.policy is not None:  # relay grants: only the organisation's relays
            event = self.policy.screen_event(event)
        self.calls.on_event(event)
        if isinstance(event, CALL_EVENTS):
            for key, value in dataclasses.asdict(event).items():
                if key not in ("sdp",):  # large, and in the call's view anyway
                    out[key] = value.hex() if isinstance(value, bytes) else value
        handler = EVENT_HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event, out)
        self.broadcast(out)

    def _on_published(self, event: Published, out: dict[str, Any]) -> None:
        if not self.registered:
            log.info(
                "name %r registered, presence stored on %d replicas",
                self.config.name,
                event.stored,
            )
        self.registered = True
        out.update(seq=event.seq, stored=event.stored)

    def _on_publish_refused(self, event: PublishRefused, out: dict[str, Any]) -> None:
        out.update(reason=event.reason)
        if event.reason == ReasonCode.NAME_TAKEN and not self.registered:
            self.fatal = NameTaken(
                f"the name {self.config.name!r} is registered by another user key; "
                "choose another with --name"
            )
            log.error("%s", self.fatal)
            self.stopping.set()
        else:
            log.error("directory refused our records: %s", event.reason)

    def _on_key_changed(self, event: KeyChanged, out: dict[str, Any]) -> None:
        self.key_changes[event.username] = event.seen
        out.update(name=event.username, pinned_key=event.pinned.hex(), owner=event.seen.hex())
        log.warning(
            "the name %r is now bound to key %s, not to %s that we trust for it: calls to and "
            "from it are refused until you check the new key with its owner",
            event.username,
            event.seen.hex()[:16],
            event.pinned.hex()[:16],
        )

    def _on_key_pinned(self, event: KeyPinned, out: dict[str, Any]) -> None:
        try:
            self.pins.add(event.username, event.key)
        except OSError as exc:
            log.warning("could not save the pin of %r: %s", event.username, exc)
        out.update(username=event.username, key=event.key.hex())
        log.info("pinned %r to key %s (first use)", event.username, event.key.hex()[:16])

    def _on_presence_changed(self, event: PresenceChanged, out: dict[str, Any]) -> None:
        contact = self.contacts.get(event.username)
        if contact is not None and contact.key is None:
            contact.key = event.record.owner  # pinned by the client core too
            self.data.save_contacts(list(self.contacts.values()))
        out.update(presence_view(event.username, event.record))

    def _on_role_changed(self, event: RoleChanged, out: dict[str, Any]) -> None:
        self.role_reason = event.reason
        self.sharing.role_changed(event.supernode, event.reason)
        if event.supernode:
            self._spawn(self.relay.start())
        else:  # calls in progress keep their relay (the duty keeper stops it once drained)
            self.relay.drain()
        out.update(supernode=event.supernode, reason=event.reason)
        log.info("role: %s (%s)", "supernode" if event.supernode else "client", event.reason)

    def _on_attached(self, event: Attached, out: dict[str, Any]) -> None:
        out.update(primary=event.primary.hex(), backup=event.backup and event.backup.hex())
        self.calls.refresh_turn()
        log.info(
            "attached to %s (backup %s)",
            short(event.primary),
            short(event.backup) if event.backup else "none",
        )

    def _on_attach_lost(self, event: AttachLost, out: dict[str, Any]) -> None:
        out.update(supernode=event.supernode.hex(), to_backup=event.to_backup)
        log.warning(
            "lost primary supernode %s; re-attaching%s",
            short(event.supernode),
            " to the backup" if event.to_backup else "",
        )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background; its failure is logged, never raised."""

        async def guarded() -> None:
            try:
                await work
            except Exception:
                self.runtime.stats["internal_errors"] += 1
                log.exception("background work failed")

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def broadcast(self, event: dict[str, Any]) -> None:
        for queue in list(self.listeners):
            if queue.full():
                queue.get_nowait()  # drop the oldest: the listener is too slow
            queue.put_nowait(event)

    def listen(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue of every event from now on, for the calling task (the control API's
        WebSocket handler), which `close_listeners` cancels when the node stops."""
        if len(self.listeners) >= MAX_LISTENERS:
            raise LocalProtocolError(f"at most {MAX_LISTENERS} event listeners")
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(LISTENER_QUEUE)
        self.listeners.add(queue)
        task = asyncio.current_task()
        if task is not None:
            self._listener_tasks[queue] = task
            task.add_done_callback(lambda _: self._listener_tasks.pop(queue, None))
        return queue

    async def close_listeners(self) -> None:
        """Tell every listener the node stops, then end their connections: a WebSocket
        client must not hold the node's exit up (it would wait for it otherwise)."""
        self.broadcast({"type": "NodeStopping", "ts": time.time()})
        if self._listener_tasks:
            await asyncio.sleep(LISTENER_GOODBYE_S)
        for task in list(self._listener_tasks.values()):
            task.cancel()
        self._listener_tasks.clear()

    async def _housekeeping(self) -> None:
        next_save = time.monotonic() + HOST_CACHE_SAVE_S
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            self.measure.tick(time.time(), sum(f.up for f in self.sharing.readings().values()))
            self.core.serve_veto = self.measure.veto()
            self.core.set_capacity(self.measure.report(self.runtime, self.config.share))
            if self.core.attached()[0] is not None and self._relay_worth_asking():
                self._turn_asked = time.monotonic()
                self.calls.refresh_turn()
            self._warn_if_not_attached()
            self._digest.maybe_log(error_counters(self.runtime.stats, self.relay.stats()))
            if time.monotonic() >= next_save:
                next_save = time.monotonic() + HOST_CACHE_SAVE_S
                self._save_host_cache()

    def _relay_worth_asking(self) -> bool:
        """Whether to let the calls ask our supernode for relay credentials now: always
        when we hold none or they run out, but if it answered that it runs no relay, only
        once a minute (each answer is logged)."""
        grant = self.calls.turn
        if grant is None or grant.urls:
            return True
        return time.monotonic() - self._turn_asked >= NO_RELAY_RETRY_S

    def _warn_if_not_attached(self) -> None:
        """Say in the log, loudly and again now and then, that we are cut off and why."""
        problem = self.network_problem()
        if not problem:
            self._attach_warned = ("", 0.0)
            return
        if time.time() - self.started_at < ATTACH_WARN_AFTER_S:
            return
        last, at = self._attach_warned
        if problem != last or time.monotonic() - at >= ATTACH_WARN_REPEAT_S:
            self._attach_warned = (problem, time.monotonic())
            log.warning("NOT attached to the network: %s", problem)

    def network_problem(self) -> str:
        """Why this node is not attached to the network ("" when it is)."""
        if self.core.attached()[0] is not None:
            return ""
        runtime = self.runtime
        now = runtime.loop.time()
        parts = list(self.bootstrap_problems)
        waiting = []
        for tried in runtime.bootstrap_tries.values():
            if tried.answered_by is not None:
                parts.append(
                    f"{tried.address} answered (node {short(tried.answered_by)}) but has not "
                    "taken us as a client (is it a supernode?)"
                )
            elif tried.tries and tried.waiting(now) and tried.tries == 1:
                waiting.append(tried.address)
            elif tried.tries:
                parts.append(
                    f"no answer from {tried.address} (handshake timed out, "
                    f"{tried.tries} {'try' if tried.tries == 1 else 'tries'}; is a supernode "
                    "running there?)"
                )
        known = len(self.core.host_cache_records())
        if not runtime.bootstrap_tries and not known and not parts:
            return "no supernode to start from: pass --bootstrap HOST:PORT (a supernode's address)"
        if waiting:
            parts.append(f"waiting for an answer from {', '.join(waiting)}")
        if known:
            parts.append(f"trying {known} supernode(s) known from earlier runs")
        return "; ".join(parts) or "attaching"

    def _save_host_cache(self) -> None:
        try:
            self.data.save_host_cache(self.core.host_cache_records())
        except OSError as exc:
            log.warning("could not save the host cache: %s", exc)

    # -- what the control API offers --------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return status_view(self)

    async def lookup(self, name: str) -> dict[str, Any]:
        if not valid_username(name):
            raise ValueError(f"{name!r} is not a valid username")
        problem = self.network_problem()
        if problem and time.time() - self.started_at > LOOKUP_TIMEOUT_S:
            # no use waiting for the lookup's deadline: nobody can answer it
            return lookup_view(None, 0.0, name, f"this node is not attached: {problem}")
        started = time.perf_counter()
        done = await self.runtime.lookup(name, LOOKUP_TIMEOUT_S)
        latency_ms = (time.perf_counter() - started) * 1000
        problem = self.network_problem()
        if done.presence is None and problem:
            return lookup_view(done, latency_ms, name, f"this node is not attached: {problem}")
        return lookup_view(done, latency_ms, name)

    def contact_list(self) -> list[dict[str, Any]]:
        buddies = self.core.buddies()
        out = []
        for name in sorted(self.contacts):
            record = buddies.get(name)
            view: dict[str, Any] = {"name": name}
            if record is not None:
                view = presence_view(name, record)
            view.setdefault("status", "unknown")
            key = self.contacts[name].key
            view["pinned_key"] = None if key is None else key.hex()
            seen = self.key_changes.get(name)
            if seen is not None:  # the page warns when owner and pinned_key differ
                view["owner"], view["key_changed"] = seen.hex(), True
            out.append(view)
        return out

    def add_contact(self, name: str) -> bool:
        if not valid_username(name):
            raise ValueError(f"{name!r} is not a valid username")
        if name in self.contacts:
            return False
        self.contacts[name] = Contact(name)
        self.data.save_contacts(list(self.contacts.values()))
        self.runtime.watch([name])
        return True

    def remove_contact(self, name: str) -> bool:
        if self.contacts.pop(name, None) is None:
            return False
        self.data.save_contacts(list(self.contacts.values()))
        self.runtime.drive(self.core.unwatch([name], self.runtime.now()))
        return True

    def set_status(self, status: Status) -> None:
        if status is Status.OFFLINE:
            raise ValueError("use online, away or busy (a node that runs is not offline)")
        self.runtime.set_status(status)


# What the service does with each kind of core event (besides the calls, which
# CallManager.on_event handles, and broadcasting every event to the API's listeners).
EVENT_HANDLERS: dict[type, Callable[[NodeService, Any, dict[str, Any]], None]] = {
    Published: NodeService._on_published,
    PublishRefused: NodeService._on_publish_refused,
    KeyPinned: NodeService._on_key_pinned,
    KeyChanged: NodeService._on_key_changed,
    PresenceChanged: NodeService._on_presence_changed,
    RoleChanged: NodeService._on_role_changed,
    Attached: NodeService._on_attached,
    AttachLost: NodeService._on_attach_lost,
    PromotionChecked: lambda service, event, out: log_promotion_check(event, out),
}
