"""A node's configuration: `DIR/config.toml`, overridden by command-line options.

Read with the standard library's `tomllib`, written with `tomli_w` (never pickle). Every
value is checked when loaded; a bad file or option is a `ConfigError` naming the key, and
the node does not start.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from peerphone import endpoints
from peerphone.daemon.duty import parse_quiet_hours
from peerphone.endpoints import TCP, UDP, Endpoint, EndpointError
from peerphone.errors import PeerphoneError
from peerphone.overlay.election import ElectionConfig
from peerphone.records import valid_username
from peerphone.runtime.link_limits import (
    MAX_LINKS,
    MAX_LINKS_PER_ADDRESS,
    MAX_LINKS_PER_PREFIX,
    TIER_RESERVE_LINKS,
    LinkLimitsConfig,
)

CONFIG_FILE = "config.toml"
ROLES = ("auto", "client", "supernode")
MAX_BOOTSTRAP = 64  # addresses in the bootstrap list
MAX_CONFIG_BYTES = 64 * 1024
MIN_LINKS = 64  # a smaller link table could not hold a supernode's tier links
MAX_LINKS_SETTING = 65_536


class ConfigError(PeerphoneError):
    """The configuration file or an option is not valid; the message names which."""


def checked_endpoint(text: str, default: str = UDP) -> Endpoint:
    """`endpoints.parse_endpoint` for a setting: port 0 allowed (listen on any free port), a
    bad value a `ConfigError` naming it."""
    try:
        return endpoints.parse_endpoint(text, default, any_port=True)
    except EndpointError as exc:
        raise ConfigError(str(exc)) from None


# a DNS host name (RFC 1123 labels): what --bootstrap accepts besides an IP literal
HOST_NAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$"
)
MAX_RESOLVED_PER_NAME = 4  # addresses of one bootstrap name that are dialled


def bootstrap_entry(text: str) -> tuple[str, str, int]:
    """A bootstrap setting as (transport, host, port): the host an IP literal or a DNS
    name (resolved when the node starts, `resolve_bootstrap`); a `ConfigError` otherwise."""
    try:
        literal = endpoints.parse_endpoint(text)
        return literal[0], literal[1][0], literal[1][1]
    except EndpointError as exc:
        error = exc
    transport, sep, rest = text.partition("://")
    if not sep:
        transport, rest = UDP, text
    host, _, port = rest.rpartition(":")
    if (
        transport in endpoints.TRANSPORTS
        and port.isdigit()
        and 1 <= int(port) <= endpoints.MAX_PORT
        and HOST_NAME.match(host.lower())
        and not host.replace(".", "").isdigit()  # 1.2.3 is a bad IP, not a name
    ):
        return transport, host.lower(), int(port)
    raise ConfigError(f"bootstrap {error}, nor a DNS name with a port (host.example:4433)")


def resolve_bootstrap(text: str) -> list[Endpoint]:
    """The endpoints a bootstrap setting names (a DNS name: its addresses, IPv4 first);
    a `ConfigError` saying why when a name does not resolve."""
    transport, host, port = bootstrap_entry(text)
    try:
        ipaddress.ip_address(host)
        return [(transport, (host, port))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(
            f"bootstrap {text!r}: the name {host!r} does not resolve ({exc})"
        ) from None
    found: list[Endpoint] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            address = str(info[4][0]).partition("%")[0]  # no IPv6 zone
            endpoint = (transport, (address, port))
            if info[0] == family and endpoint not in found:
                found.append(endpoint)
    return found[:MAX_RESOLVED_PER_NAME]


@dataclass(slots=True)
class ShareConfig:
    """What the owner agrees to give the network if the node becomes a supernode: the caps
    `daemon/duty.py` enforces (bandwidth as whole IP packets sent, kbit/s = 1000 bit/s)."""

    max_clients: int = 600  # clients served at most; 0: never a supernode
    up_kbps: int = 2_000  # the relay's cap: what its sockets send; 0: no relay
    directory_kbps: int = 1_000  # directory and signaling: what the overlay sends
    day_mb: int = 5_000  # both categories, both ways, per UTC day (MB = 10^6 B); 0: no cap
    month_mb: int = 50_000  # ... per UTC month; 0: no cap
    cpu_percent: int = 50  # of one core, the node process (getrusage)
    only_when_idle: bool = False  # step down while the owner is in a call or the machine busy
    quiet_hours: str = ""  # "23:00-07:00": no duty then (local time); "": none

    def check(self) -> None:
        """Raise ConfigError naming the first impossible value (`share.KEY: ...`)."""
        for key, (low, high, unit) in SHARE_RANGES.items():
            value = getattr(self, key)
            if not low <= value <= high:
                raise ConfigError(f"share.{key}: {value} is impossible: {low}-{high} {unit}")
        try:
            parse_quiet_hours(self.quiet_hours)
        except ValueError as exc:
            raise ConfigError(f"share.quiet_hours: {exc}") from None


# what each numeric [share] setting may be: (lowest, highest, unit)
SHARE_RANGES = {
    "max_clients": (0, 100_000, "clients (0: never a supernode)"),
    "up_kbps": (0, 10_000_000, "kbit/s (0: no relay)"),
    "directory_kbps": (16, 10_000_000, "kbit/s"),
    "day_mb": (0, 100_000_000, "MB (0: no cap)"),
    "month_mb": (0, 1_000_000_000, "MB (0: no cap)"),
    "cpu_percent": (1, 100, "percent of one core"),
}


@dataclass(slots=True)
class NodeConfig:
    """Everything `peerphone node` needs besides the keys."""

    name: str = ""
    listen: str = "0.0.0.0:0"  # UDP: QUIC links
    tcp_listen: str = ""  # TCP carrier of the same links (supernodes: port 443 ideally)
    bootstrap: list[str] = field(default_factory=list)
    role: str = "auto"
    control: str = "127.0.0.1:0"
    device: str = "node"
    auto_answer: bool = False  # answer incoming calls by themselves (headless nodes)
    answer_play: str = ""  # WAV file played to callers we auto-answer (silence if empty)
    answer_record: str = ""  # directory where auto-answered calls are recorded
    # CIDRs our relay (and our dial-backs of candidates) may reach anyway
    relay_allow: list[str] = field(default_factory=list)
    turn_port: int = 3478  # STUN/TURN over UDP, when a supernode (0: any free port)
    # QUIC links in all; inbound ones per source address and per /24 (/48) prefix
    # (runtime/link_limits.py)
    links_max: int = MAX_LINKS
    links_per_address: int = MAX_LINKS_PER_ADDRESS
    links_per_prefix: int = MAX_LINKS_PER_PREFIX
    # loopback sources skip those two bounds (docs/decisions/0013-link-limits.md)
    links_loopback_exempt: bool = True
    share: ShareConfig = field(default_factory=ShareConfig)
    # the election this node applies as a supernode (overlay/election.py): a lab lowers
    # the water marks to make the tier ask for candidates at once. Upload is measured from
    # real transfers (a lower bound), so its threshold is about one call's worth
    election_high_water: float = 300.0  # mean clients per supernode: the tier grows above
    election_low_water: float = 100.0  # ... and shrinks below
    election_min_uptime_s: int = 600  # typical session length, from the session history
    election_min_up_kbps: int = 100
    election_min_cpu_score: int = 50  # spare CPU, hundredths of a core
    election_min_attached_s: float = 60.0  # seen attached by its promoter at least this long

    def link_limits(self) -> LinkLimitsConfig:
        """The link limits these settings ask for (checked by `check`)."""
        return LinkLimitsConfig(
            max_links=self.links_max,
            tier_reserve=min(TIER_RESERVE_LINKS, self.links_max // 8),
            per_address=self.links_per_address,
            per_prefix=self.links_per_prefix,
            loopback_exempt=self.links_loopback_exempt,
        )

    def election(self) -> ElectionConfig:
        """The election these settings ask for, with candidates dialled back."""
        return ElectionConfig(
            high_water=self.election_high_water,
            low_water=self.election_low_water,
            min_uptime_s=self.election_min_uptime_s,
            min_up_kbps=self.election_min_up_kbps,
            min_cpu_score=self.election_min_cpu_score,
            verify_reachability=True,
            min_attached_s=self.election_min_attached_s,
        )

    def check(self) -> None:
        """Raise ConfigError unless every value is usable."""
        if self.role == "supernode" and self.share.max_clients == 0:
            raise ConfigError("share.max_clients: 0 means never a supernode, but role is supernode")
        if not valid_username(self.name):
            raise ConfigError(
                f"name {self.name!r} is not valid: 1-32 of a-z, 0-9, '.', '_', '-'"
                if self.name
                else "no name: pass --name USER on the first start"
            )
        if self.role not in ROLES:
            raise ConfigError(f"role {self.role!r}: expected one of {', '.join(ROLES)}")
        if checked_endpoint(self.listen)[0] != UDP:
            raise ConfigError("listen: a UDP HOST:PORT")
        if self.tcp_listen:
            checked_endpoint(self.tcp_listen, TCP)
        if len(self.bootstrap) > MAX_BOOTSTRAP:
            raise ConfigError(f"bootstrap: at most {MAX_BOOTSTRAP} addresses")
        for text in self.bootstrap:
            bootstrap_entry(text)
        transport, (host, _) = checked_endpoint(self.control)
        if transport != UDP or not ipaddress.ip_address(host).is_loopback:
            raise ConfigError("control: the control API listens on loopback only")
        if not 0 <= self.turn_port < 65_536:
            raise ConfigError("turn_port: 0-65535")
        for cidr in self.relay_allow:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"relay_allow: {cidr!r} is not a CIDR range") from None
        if not MIN_LINKS <= self.links_max <= MAX_LINKS_SETTING:
            raise ConfigError(f"links_max: {MIN_LINKS}-{MAX_LINKS_SETTING}")
        if not 1 <= self.links_per_address <= self.links_per_prefix <= self.links_max:
            raise ConfigError("need 1 <= links_per_address <= links_per_prefix <= links_max")
        if not 0 < len(self.device) <= 32:
            raise ConfigError("device: 1-32 characters")
        for option, value in (
            ("answer_play", self.answer_play),
            ("answer_record", self.answer_record),
        ):
            if value and not Path(value).is_absolute():
                raise ConfigError(f"{option}: an absolute path is expected, not {value!r}")
        if self.answer_play and not Path(self.answer_play).is_file():
            raise ConfigError(f"answer_play (--answer-play): {self.answer_play}: no such file")
        if self.answer_record and not Path(self.answer_record).is_dir():
            raise ConfigError(
                f"answer_record (--answer-record): {self.answer_record} is not a directory "
                "(create it first)"
            )
        if self.answer_record and not os.access(self.answer_record, os.W_OK | os.X_OK):
            raise ConfigError(
                f"answer_record (--answer-record): {self.answer_record}: not writable"
            )
        if not 0 < self.election_low_water < self.election_high_water <= 100_000:
            raise ConfigError("need 0 < election_low_water < election_high_water <= 100000")
        for key in ("min_uptime_s", "min_up_kbps", "min_cpu_score", "min_attached_s"):
            if not 0 <= getattr(self, "election_" + key) <= 10**7:
                raise ConfigError(f"election_{key}: 0-10000000")
        self.share.check()


def apply_options(config: NodeConfig, options: Mapping[str, Any]) -> None:
    """Command-line options (argparse's names; None: not given) over the saved settings."""
    for option in ("name", "listen", "tcp_listen", "role", "control", "device", "turn_port"):
        if options.get(option) is not None:
            setattr(config, option, options[option])
    for option in ("links_max", "links_per_address", "links_per_prefix"):
        if options.get(option) is not None:
            setattr(config, option, options[option])
    for option in ("bootstrap", "relay_allow"):
        if options.get(option) is not None:
            setattr(config, option, list(options[option]))
    if options.get("max_clients") is not None:
        config.share.max_clients = options["max_clients"]
    if options.get("auto_answer") is not None:
        config.auto_answer = True
    for option in ("answer_play", "answer_record"):
        value = options.get(option)
        if value is not None:  # relative to where the command runs; "" clears it
            setattr(config, option, str(Path(value).resolve()) if value else "")
    if options.get("links_loopback_exempt") is not None:
        config.links_loopback_exempt = options["links_loopback_exempt"] == "yes"


def _typed(section: type[Any], data: dict[str, Any], where: str) -> dict[str, Any]:
    """The known keys of `data`, each checked against the type of `section`'s default."""
    defaults = section()
    known = {f.name for f in fields(section)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}{key}: unknown setting")
        default = getattr(defaults, key)
        if isinstance(default, ShareConfig):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key}: expected a table")
            out[key] = ShareConfig(**_typed(ShareConfig, value, f"{key}."))
            continue
        ok = (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
            if isinstance(default, list)
            else type(value) is type(default)
        )
        if not ok:
            raise ConfigError(f"{where}{key}: expected {type(default).__name__}, not {value!r}")
        out[key] = value
    return out


def load_config(data_dir: Path) -> NodeConfig:
    """The saved configuration, or the defaults when there is none yet (not yet checked:
    see `checked_config`). A file that is not TOML, has an unknown key or a value of the
    wrong type is a `ConfigError` naming the file, the line and the reason."""
    path = data_dir / CONFIG_FILE
    if not path.exists():
        return NodeConfig()
    raw = path.read_bytes()
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\s*\(at line (\d+), column \d+\)", str(exc))
        if found is None:
            raise ConfigError(f"{path}: {exc}") from None
        reason = str(exc).replace(found.group(0), "")
        raise ConfigError(f"{path}:{found.group(1)}: {reason}") from None
    try:
        return NodeConfig(**_typed(NodeConfig, data, ""))
    except ConfigError as exc:
        raise located(exc, path, text) from None


def key_line(text: str, key: str) -> int:
    """The line (from 1) of `text` that sets the dotted `key` (`share.cpu_percent`: inside
    the `[share]` table), or that opens the table `key`; 0 when none does."""
    table, _, name = key.rpartition(".")
    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[] ")
            if current == key:
                return number
            continue
        if current == table and re.match(rf"{re.escape(name)}\s*=", stripped):
            return number
    return 0


def setting_of(error: ConfigError) -> str:
    """The setting an error is about: the first word of its message (`share.up_kbps: ...`,
    `role 'boss': ...`, `answer_play (--answer-play): ...`)."""
    return re.split(r"[\s:]", str(error), maxsplit=1)[0]


def located(error: ConfigError, path: Path, text: str) -> ConfigError:
    """`error` about a setting of the file at `path` (holding `text`), as `FILE:LINE: ...`."""
    line = key_line(text, setting_of(error))
    return ConfigError(f"{path}:{line}: {error}" if line else f"{path}: {error}")


def checked_config(data_dir: Path, options: Mapping[str, Any]) -> NodeConfig:
    """The saved configuration with the command line's `options` over it, checked: an
    impossible value from the file is a `ConfigError` naming the file and its line."""
    config = load_config(data_dir)
    apply_options(config, options)
    try:
        config.check()
    except ConfigError as exc:
        key = setting_of(exc)
        option = "max_clients" if key == "share.max_clients" else key
        path = data_dir / CONFIG_FILE
        text = path.read_text("utf-8") if path.exists() else ""
        if options.get(option) is None and key_line(text, key):
            raise located(exc, path, text) from None
        raise
    return config


def save_config(data_dir: Path, config: NodeConfig) -> None:
    from peerphone.daemon.datadir import write_atomic

    write_atomic(data_dir / CONFIG_FILE, tomli_w.dumps(asdict(config)).encode(), private=True)
