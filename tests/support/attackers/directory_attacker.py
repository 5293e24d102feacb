"""A stock `peerphone node` with small patches, as an attacker on the directory would run it.

    python -m tests.support.attackers.directory_attacker MODE REPORT node --data-dir ... [opts]

MODE
  squat   keep running when the directory says the name belongs to another key (the stock
          node exits with status 3): a name squatter attached to the victim's supernode.
  forge   as a supernode, answer every Fetch, watch subscription and (for its own clients)
          Lookup for the names listed in $PEERPHONE_FORGE (comma-separated) with a name and a
          presence record signed by this node's own user key, at a sequence far above any
          genuine one.
  intrude as a supernode, claim a public address it does not have ("44.1.2.3:4433") in its
          member record, and push a member record made up for a throwaway key to every
          bootstrap supernode in the gossip of a Ping (the tier's second door besides Join).
          With $PEERPHONE_MOVE_TO ("HOST:PORT") it also, once it knows
          $PEERPHONE_MOVE_AFTER other members and has served $PEERPHONE_MOVE_DELAY_S
          seconds, re-signs its member record (a higher
          incarnation) with that address first — a public /24 it does not sit in, picked
          so that the ring position of that range lands next to a target — and gossips it.
  hide    as a supernode, give in its member record its own IP but a port where nothing
          listens (HIDDEN_PORT): a supernode that cannot be reached where it says.
All count, in REPORT (JSON, rewritten on every change), the call signals this node was
handed (`signals`, with the call kinds), the forged answers it sent (`forged`), and the
records of the target names it was handed to store (`target_stores`).

The patches replace module attributes before the stock CLI runs: nothing in the package
knows about them. Kept in the tests' support code, never in `src/`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import peerphone.daemon.service as service_module
from peerphone import cli
from peerphone.errors import DecodeError
from peerphone.identity import KeyPair, NodeId
from peerphone.overlay import node as node_module
from peerphone.overlay.callmsg import decode_call_message
from peerphone.overlay.node import NodeCore
from peerphone.overlay.supernode import Send, SupernodeCore
from peerphone.records import (
    Capacity,
    MemberBody,
    NameBody,
    PresenceBody,
    Record,
    RecordKind,
    Status,
    decode_body,
    make_record,
    user_key,
)
from peerphone.wire import (
    Fetch,
    FetchResult,
    Gossip,
    Lookup,
    LookupResult,
    MemberState,
    Message,
    Notify,
    Ping,
    SignalDeliver,
    Store,
    Subscribe,
)

CLAIMED_ADDRESS = "44.1.2.3:4433"
MADE_UP_ADDRESS = "45.6.7.8:4433"
HIDDEN_PORT = 9  # discard: nothing listens on it on the test machines' loopback
FORGED_SEQ = 2**60
FORGED_TTL_S = 3600.0

counts: dict[str, Any] = {"signals": 0, "kinds": [], "forged": 0, "target_stores": 0}
report_path = Path()


def _save() -> None:
    tmp = report_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(counts))
    tmp.replace(report_path)


def _patch_count_signals() -> None:
    stock_receive = NodeCore.receive

    def receive(self: NodeCore, msg: Message, src: NodeId, now: float) -> list[Send]:
        if isinstance(msg, SignalDeliver):
            counts["signals"] += 1
            try:
                counts["kinds"].append(decode_call_message(msg.payload).kind.name)
            except DecodeError:
                counts["kinds"].append("undecodable")
            _save()
        return stock_receive(self, msg, src, now)

    NodeCore.receive = receive  # type: ignore[method-assign]


def _patch_squat() -> None:
    # the stock node stops when its publish is refused with NAME_TAKEN: never match it
    service_module.ReasonCode = SimpleNamespace(NAME_TAKEN="\x00never")  # type: ignore[attr-defined,assignment]


def _forged(sn: SupernodeCore, name: str, now: float) -> list[Record]:
    keys = sn_user_keys[0]
    expires_ms = int((now + FORGED_TTL_S) * 1000)
    fields: list[Any] = [name, "attacker", Status.ONLINE, [bytes(sn.me)], [], ["voice"], sn.me]
    # (cut to the fields this version has: the same attacker runs against older code)
    body = PresenceBody(*fields[: len(PresenceBody.__struct_fields__)])
    return [
        make_record(RecordKind.NAME, keys, FORGED_SEQ, expires_ms, NameBody(name)),
        make_record(RecordKind.PRESENCE, keys, FORGED_SEQ, expires_ms, body),
    ]


sn_user_keys: list[Any] = []


def _patch_forge(targets: list[str]) -> None:
    by_key = {user_key(name): name for name in targets}
    stock_fetch = node_module.SUPERNODE_HANDLERS[Fetch]
    stock_subscribe = node_module.SUPERNODE_HANDLERS[Subscribe]
    stock_init = NodeCore.__init__

    def init(self: NodeCore, *args: Any, **kwargs: Any) -> None:
        stock_init(self, *args, **kwargs)
        sn_user_keys.append(self.client.user_keys)

    def fetch(sn: SupernodeCore, msg: Message, src: NodeId, now: float) -> list[Send]:
        assert isinstance(msg, Fetch)
        name = by_key.get(msg.key)
        if name is None:
            return stock_fetch(sn, msg, src, now)
        counts["forged"] += 1
        _save()
        return [(src, FetchResult(msg.req, _forged(sn, name, now), True))]

    def subscribe(sn: SupernodeCore, msg: Message, src: NodeId, now: float) -> list[Send]:
        assert isinstance(msg, Subscribe)
        out = stock_subscribe(sn, msg, src, now)
        forged = [r for k in msg.keys if k in by_key for r in _forged(sn, by_key[k], now)]
        if msg.add and forged:
            counts["forged"] += 1
            _save()
            out.append((src, Notify(forged)))
        return out

    def lookup(sn: SupernodeCore, msg: Message, src: NodeId, now: float) -> list[Send]:
        assert isinstance(msg, Lookup)
        if user_key(msg.username) not in by_key:
            return stock_lookup(sn, msg, src, now)
        counts["forged"] += 1
        _save()
        return [(src, LookupResult(msg.req, _forged(sn, msg.username, now), 1, ""))]

    stock_store = node_module.SUPERNODE_HANDLERS[Store]

    def store(sn: SupernodeCore, msg: Message, src: NodeId, now: float) -> list[Send]:
        assert isinstance(msg, Store)
        for record in msg.records:
            try:
                body = decode_body(record)
            except DecodeError:
                continue
            if isinstance(body, (NameBody, PresenceBody)) and user_key(body.username) in by_key:
                counts["target_stores"] += 1
                _save()
        return stock_store(sn, msg, src, now)

    stock_lookup = node_module.SUPERNODE_HANDLERS[Lookup]
    node_module.SUPERNODE_HANDLERS[Store] = store
    NodeCore.__init__ = init  # type: ignore[method-assign]
    node_module.SUPERNODE_HANDLERS[Lookup] = lookup
    node_module.SUPERNODE_HANDLERS[Fetch] = fetch
    node_module.SUPERNODE_HANDLERS[Subscribe] = subscribe


def _patch_hide() -> None:
    stock_become = NodeCore.become_supernode

    def become(
        self: NodeCore,
        now: float,
        reason: str,
        seed: bool = False,
        role: SupernodeCore | None = None,
    ) -> SupernodeCore:
        host = self.addresses[0].rpartition(":")[0]
        self.addresses[:] = [f"{host}:{HIDDEN_PORT}"]
        return stock_become(self, now, reason, seed, role)

    NodeCore.become_supernode = become  # type: ignore[method-assign]


def _patch_intrude() -> None:
    stock_become = NodeCore.become_supernode
    stock_learn = NodeCore.learn_bootstrap

    def become(
        self: NodeCore,
        now: float,
        reason: str,
        seed: bool = False,
        role: SupernodeCore | None = None,
    ) -> SupernodeCore:
        self.addresses[:] = [CLAIMED_ADDRESS]  # a public address that is not ours
        return stock_become(self, now, reason, seed, role)

    def learn(self: NodeCore, node_ids: list[NodeId], now: float) -> list[Send]:
        out = stock_learn(self, node_ids, now)
        sn = self.supernode
        if sn is None:
            return out
        made_up = KeyPair.generate()
        body = MemberBody([MADE_UP_ADDRESS], Capacity(True, 86_400, 10_000, 10_000, 100), 600)
        record = make_record(RecordKind.MEMBER, made_up, 0, int((now + 3600) * 1000), body)
        gossip = [
            Gossip(MemberState.ALIVE, made_up.node_id, 0, record),
            Gossip(MemberState.ALIVE, self.id, sn.membership.incarnation, sn.record),
        ]
        counts["made_up_member"] = made_up.node_id.hex()
        _save()
        return [*out, *((node, Ping(0, 0, gossip)) for node in node_ids)]

    NodeCore.become_supernode = become  # type: ignore[method-assign]
    NodeCore.learn_bootstrap = learn  # type: ignore[method-assign]


def _patch_move(address: str, after: int, delay_s: float) -> None:
    stock_timer = SupernodeCore.handle_timer

    def handle_timer(sn: SupernodeCore, now: float) -> list[Send]:
        m = sn.membership
        if not counts.get("moved") and len(m.members) >= after and now - sn.started >= delay_s:
            body = m.body
            m.body = MemberBody([address, *body.addresses], body.capacity, body.max_clients)
            m._refute(m.incarnation, now)  # re-sign at a higher incarnation and gossip it
            counts["moved"] = m.incarnation
            _save()
        return stock_timer(sn, now)

    SupernodeCore.handle_timer = handle_timer  # type: ignore[method-assign,assignment]


def main(argv: list[str]) -> int:
    global report_path
    mode, report, *rest = argv
    report_path = Path(report)
    _save()
    _patch_count_signals()
    if mode == "squat":
        _patch_squat()
    elif mode == "intrude":
        _patch_intrude()
    elif mode == "hide":
        _patch_hide()
    elif mode == "forge":
        _patch_forge([n for n in os.environ.get("PEERPHONE_FORGE", "").split(",") if n])
        move_to = os.environ.get("PEERPHONE_MOVE_TO")
        if move_to:
            after = int(os.environ.get("PEERPHONE_MOVE_AFTER", "1"))
            _patch_move(move_to, after, float(os.environ.get("PEERPHONE_MOVE_DELAY_S", "0")))
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
