"""Managed mode: an organisation's policy file that the user's config and flags cannot override.

The file lives at a fixed system path, `POLICY_PATH` (no option, setting or environment
variable moves it). When it exists, `peerphone node`:

- never serves: role client, whatever the config says (a `--role` other than client is
  refused); the core refuses promotion (`NodeCore.restrict_supernodes`), so no relay runs;
- attaches only to the listed supernodes: their addresses are the whole bootstrap list
  (other `--bootstrap` addresses are ignored, and status says so) and the core drops every
  other supernode (host cache, redirect hints, the others an AttachAccept names); an address
  that answers with another node id than the one pinned is not attached to;
- listens on the policy's fixed ports (a different `--listen`/`--tcp-listen`/`--control`
  is refused);
- optionally hands calls only the organisation's relays (`relays`: the TURN/STUN URLs a
  relay grant may contain; others are dropped) and calls, and takes calls from, only users
  whose name ends with one of `allow_suffixes` or whose pinned key is in `allow_keys`.

A malformed file, an unknown key or an impossible value is a `ConfigError` naming the file,
the line (when it can be told) and the reason; the node does not start.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerphone import endpoints
from peerphone.daemon.config import ConfigError, NodeConfig
from peerphone.endpoints import TCP, UDP, EndpointError, endpoint_or_none
from peerphone.identity import NodeId, short
from peerphone.overlay.events import Event, TurnGranted
from peerphone.records import valid_username

POLICY_PATH = Path("/etc/peerphone/policy.toml")  # fixed: not settable by the user
MAX_POLICY_BYTES = 64 * 1024
MAX_SUPERNODES = 16
MAX_LIST = 256  # relays, suffixes, keys
KEYS = ("supernodes", "listen", "tcp_listen", "control", "relays", "calls")
SUPERNODE_KEYS = ("node_id", "address", "tcp")
CALL_KEYS = ("allow_suffixes", "allow_keys")
RELAY_SCHEMES = ("stun:", "turn:", "turns:")
# options that ask the node to serve others: refused outright in managed mode
SERVING_OPTIONS = {
    "relay_allow": "--relay-allow",
    "turn_port": "--turn-port",
    "max_clients": "--max-clients",
}
FIXED_OPTIONS = {"listen": "--listen", "tcp_listen": "--tcp-listen", "control": "--control"}


@dataclass(frozen=True, slots=True)
class PinnedSupernode:
    """One of the organisation's supernodes: who it is and where."""

    node_id: NodeId
    address: str  # UDP HOST:PORT (an IP literal)
    tcp: str  # tcp://HOST:PORT of its carrier, or ""


@dataclass(slots=True)
class Policy:
    """A parsed policy file (see the module docstring)."""

    path: Path
    supernodes: tuple[PinnedSupernode, ...]
    listen: str
    tcp_listen: str = ""
    control: str = ""
    relays: tuple[str, ...] = ()  # empty: whatever relay the listed supernodes grant
    allow_suffixes: tuple[str, ...] = ()
    allow_keys: tuple[bytes, ...] = ()
    overridden: list[str] = field(default_factory=list)  # saved settings it replaced

    @property
    def restricts_calls(self) -> bool:
        return bool(self.allow_suffixes or self.allow_keys)

    def node_ids(self) -> list[NodeId]:
        return [sn.node_id for sn in self.supernodes]

    def bootstrap(self) -> list[str]:
        out = [sn.address for sn in self.supernodes]
        return out + [sn.tcp for sn in self.supernodes if sn.tcp]

    def refuse(self, option: str, value: object, why: str) -> ConfigError:
        return ConfigError(f"{option} {value}: refused: this node is managed by {self.path}, {why}")

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse command-line options that conflict with the policy (argparse's names;
        None: not given). Other `--bootstrap` addresses are not refused but ignored."""
        role = options.get("role")
        if role is not None and role != "client":
            raise self.refuse("--role", role, "which says it never serves (role client)")
        for name, flag in SERVING_OPTIONS.items():
            if options.get(name) is not None:
                raise self.refuse(flag, options[name], "which says it never serves or relays")
        for name, flag in FIXED_OPTIONS.items():
            given, fixed = options.get(name), getattr(self, name)
            if given is not None and fixed and _canonical(given, name) != fixed:
                raise self.refuse(flag, given, f"which fixes it to {fixed}")
            if given and not fixed and name == "tcp_listen":
                raise self.refuse(flag, given, "which opens no TCP port")

    def apply(self, config: NodeConfig) -> None:
        """Put the policy's settings over `config` (after the user's options), noting what
        it replaced (`overridden`, shown by status)."""
        ignored = [b for b in config.bootstrap if b not in self.bootstrap()]
        if ignored:
            self.overridden.append(
                f"bootstrap {', '.join(ignored)} ignored: only the listed supernodes"
            )
        if config.role == "supernode":  # saved (a flag was refused already)
            self.overridden.append(f"role {config.role} replaced by client")
        config.role = "client"
        config.bootstrap = self.bootstrap()
        config.relay_allow = []
        config.listen = self.listen
        config.tcp_listen = self.tcp_listen
        if self.control:
            config.control = self.control

    def fixed(self) -> dict[str, Any]:
        """What the policy fixed, for status."""
        out: dict[str, Any] = {
            "role": "client (never a supernode, never relays for others)",
            "supernodes": [
                {"node_id": sn.node_id.hex(), "address": sn.address, "tcp": sn.tcp or None}
                for sn in self.supernodes
            ],
            "listen": self.listen,
            "tcp_listen": self.tcp_listen or None,
        }
        if self.control:
            out["control"] = self.control
        if self.relays:
            out["relays"] = list(self.relays)
        if self.restricts_calls:
            out["calls_allowed"] = {
                "suffixes": list(self.allow_suffixes),
                "keys": [key.hex() for key in self.allow_keys],
            }
        return out

    def view(self) -> dict[str, Any]:
        return {"file": str(self.path), "fixed": self.fixed(), "overridden": list(self.overridden)}

    def call_refusal(self, name: str, key: bytes | None) -> str:
        """Why a call to or from `name` (its pinned key: `key`) is refused; "" if allowed."""
        if not self.restricts_calls:
            return ""
        if any(name.endswith(suffix) for suffix in self.allow_suffixes):
            return ""
        if key is not None and key in self.allow_keys:
            return ""
        return f"{name} is outside the organisation's allow-list (policy {self.path})"

    def screen_event(self, event: Event) -> Event:
        """A relay grant keeps only the organisation's relays (`relays`), if it lists any."""
        if not self.relays or not isinstance(event, TurnGranted):
            return event
        urls = [url for url in event.urls if url in self.relays]
        if urls == event.urls:
            return event
        reason = event.reason or (f"no relay allowed by policy {self.path}" if not urls else "")
        return dataclasses.replace(event, urls=urls, reason=reason)

    def describe(self) -> str:
        """One line for the log."""
        sns = ", ".join(f"{short(sn.node_id)}@{sn.address}" for sn in self.supernodes)
        return f"managed by {self.path}: client only, supernodes {sns}, listen {self.listen}"


def load_policy(path: Path = POLICY_PATH) -> Policy | None:
    """The policy at `path`, or None when there is none; a `ConfigError` if it is bad."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_POLICY_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc.reason})") from None
    return parse_policy(text, path)


def parse_policy(text: str, path: Path = POLICY_PATH) -> Policy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        where = f"{path}:{found.group(1)}" if found else str(path)
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError(f"{where}: {reason}") from None
    return _Parser(text, path).policy(data)


class _Parser:
    def __init__(self, text: str, path: Path) -> None:
        self.lines = text.splitlines()
        self.path = path

    def error(self, key: str, reason: str, table: str = "") -> ConfigError:
        """An error about `key`, at the first line that sets it (inside `table` if given)."""
        line = 0
        inside = not table
        for number, content in enumerate(self.lines, 1):
            stripped = content.strip()
            if stripped.startswith("["):
                inside = not table or stripped.strip("[] ") == table
                if stripped.strip("[] ") == key:
                    line = number
                    break
                continue
            if inside and re.match(rf"{re.escape(key.split('.')[-1])}\s*=", stripped):
                line = number
                break
        where = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{where}: {key}: {reason}")

    def policy(self, data: dict[str, Any]) -> Policy:
        for key in data:
            if key not in KEYS:
                raise self.error(key, f"unknown setting (known: {', '.join(KEYS)})")
        supernodes = self.supernodes(data.get("supernodes"))
        listen = self.endpoint(data, "listen", UDP, required=True)
        tcp_listen = self.endpoint(data, "tcp_listen", TCP)
        control = self.endpoint(data, "control", UDP)  # HOST:PORT (served over TCP)
        if control and not ipaddress.ip_address(endpoints.parse_address(control)[0]).is_loopback:
            raise self.error("control", "the control API listens on loopback only")
        relays = self.strings(data, "relays")
        for url in relays:
            if not url.startswith(RELAY_SCHEMES):
                raise self.error("relays", f"{url!r} is not a stun:/turn:/turns: URL")
        calls = data.get("calls", {})
        if not isinstance(calls, dict):
            raise self.error("calls", "expected a table ([calls])")
        for key in calls:
            if key not in CALL_KEYS:
                raise self.error(f"calls.{key}", "unknown setting", "calls")
        suffixes = self.strings(calls, "allow_suffixes", "calls")
        for suffix in suffixes:
            if not suffix or not valid_username("a" + suffix.lstrip(".")):
                raise self.error("calls.allow_suffixes", f"{suffix!r} cannot end a name", "calls")
        keys = tuple(
            self.hex32(text, "calls.allow_keys", "calls")
            for text in self.strings(calls, "allow_keys", "calls")
        )
        return Policy(
            self.path,
            supernodes,
            listen,
            tcp_listen,
            control,
            tuple(relays),
            tuple(suffixes),
            keys,
        )

    def supernodes(self, value: object) -> tuple[PinnedSupernode, ...]:
        if value is None:
            raise self.error("supernodes", "missing: list at least one [[supernodes]]")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error("supernodes", "expected tables ([[supernodes]])")
        if not 1 <= len(value) <= MAX_SUPERNODES:
            raise self.error("supernodes", f"1-{MAX_SUPERNODES} supernodes")
        out: list[PinnedSupernode] = []
        for entry in value:
            for key in entry:
                if key not in SUPERNODE_KEYS:
                    raise self.error(f"supernodes.{key}", "unknown setting", "supernodes")
            node_id = self.hex32(entry.get("node_id"), "supernodes.node_id", "supernodes")
            address = self.endpoint(entry, "address", UDP, True, "supernodes", pinned=True)
            tcp = self.endpoint(entry, "tcp", TCP, False, "supernodes", pinned=True)
            if any(sn.node_id == node_id for sn in out):
                raise self.error("supernodes.node_id", "listed twice", "supernodes")
            out.append(PinnedSupernode(NodeId(node_id), address, tcp))
        return tuple(out)

    def endpoint(
        self,
        data: Mapping[str, Any],
        key: str,
        kind: str,
        required: bool = False,
        table: str = "",
        pinned: bool = False,
    ) -> str:
        """A fixed HOST:PORT (port not 0) as canonical text ("" when absent)."""
        value = data.get(key)
        name = f"{table}.{key}" if table else key
        if value is None:
            if required:
                raise self.error(name, "missing", table)
            return ""
        if not isinstance(value, str):
            raise self.error(name, "expected a string HOST:PORT", table)
        try:
            transport, address = endpoints.parse_endpoint(value, kind)
        except EndpointError as exc:
            if endpoint_or_none(value.replace(":0", ":1")) is not None and value.endswith(":0"):
                raise self.error(name, "a fixed port is needed, not 0", table) from None
            raise self.error(name, str(exc), table) from None
        if transport != kind:
            raise self.error(name, f"expected a {kind} address", table)
        if pinned and address[0] in ("0.0.0.0", "::"):
            raise self.error(name, "a supernode's address cannot be unspecified", table)
        return endpoints.format_endpoint((transport, address))

    def strings(self, where: Mapping[str, Any], key: str, table: str = "") -> list[str]:
        value = where.get(key, [])
        name = f"{table}.{key}" if table else key
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, "expected a list of strings", table)
        if len(value) > MAX_LIST:
            raise self.error(name, f"at most {MAX_LIST} entries", table)
        return list(value)

    def hex32(self, value: object, name: str, table: str) -> bytes:
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise self.error(name, "expected 64 hex digits", table)
        return bytes.fromhex(value)


def _canonical(text: str, option: str) -> str:
    """An address option as the policy writes it (the text itself if it does not parse)."""
    try:
        kind = TCP if option == "tcp_listen" else UDP
        endpoint = endpoints.parse_endpoint(text, kind, any_port=True)
    except EndpointError:
        return text
    return endpoints.format_endpoint(endpoint)
