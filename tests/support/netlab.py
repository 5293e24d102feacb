"""A network-namespace NAT lab: a small "internet", public hosts and hosts behind real NATs.

Needs root, iproute2 (``ip``) and nftables (``nft``). Everything lives in network
namespaces named ``pplab-<pid>-<seq>-<role>``:

* ``…-inet``: the "internet", a bridge ``br0`` with no address of its own. Public hosts and
  router WAN legs hang off it with addresses in 10.99.0.0/24.
* ``…-h-<name>``: a host. A public host has ``eth0`` = 10.99.0.x/24. A host behind a NAT
  has ``eth0`` = 192.168.N.2/24 and a route to 10.99.0.0/24 via its router.
* ``…-r-<name>``: a host's router: ``wan0`` on the bridge, ``lan0`` = 192.168.N.1/24, an
  nftables ruleset (``table inet netlab``) that NATs the LAN and drops all unsolicited
  inbound traffic (dropping, not rejecting: a rejected packet leaves a conntrack entry
  behind that makes the NAT choose another source port, which breaks hole punching).

No namespace has a default route or any address outside 10.99.0.0/24, 192.168.N.0/24 and
(for a public host that asks for one, to test rules about public ranges) 44.0.0.0/8 on the
same bridge, so nothing can leave the lab. Veth pairs are created directly inside the
namespaces (the host's own namespace never sees them) and vanish with them.
IPv6 is switched off in the lab.

NAT kinds:

* ``cone``: port-restricted cone NAT (``masquerade``: the same external port for every
  destination; inbound only from an address *and* port the host has sent to).
* ``symmetric``: ``masquerade fully-random``: a new random external port per destination.
* ``firewall443``: a corporate firewall: only outbound TCP to port 443 (plus replies) is
  forwarded, still NATed; everything else is dropped.

Use as a context manager; teardown kills the processes started with :meth:`NetLab.run`
and every process left in the lab's namespaces, then deletes the namespaces. Teardown is
idempotent, also registered with ``atexit``, and a new lab deletes namespaces left behind
by a process that no longer exists.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from peerphone.procs import pid_alive

NatKind = Literal["cone", "symmetric", "firewall443"]
NAT_KINDS: tuple[NatKind, ...] = get_args(NatKind)

PREFIX = "pplab-"
INTERNET_NET = "10.99.0"  # /24
GLOBAL_NET = "44"  # /8: globally routable-looking addresses, on request (public_host)
CMD_TIMEOUT_S = 10.0
KILL_WAIT_S = 2.0

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,31}$")
_LAB_NS_RE = re.compile(rf"^{re.escape(PREFIX)}(\d+)-(\d+)-")
_SEQ = itertools.count(1)  # 0 is the availability probe
_LIVE: dict[str, NetLab] = {}  # prefix -> open lab, in this process


class NetLabError(RuntimeError):
    """A lab command failed or the lab is used wrongly."""


@dataclass(frozen=True)
class Host:
    """A namespace in the lab.

    ``addr`` is the host's own address; ``public_addr`` is what hosts on the internet see
    (``addr`` for a public host, the router's WAN address for a host behind a NAT).
    """

    name: str
    ns: str
    addr: str
    public_addr: str
    nat: NatKind | None = None
    router: Host | None = None


def _command(
    argv: Sequence[str], *, input: str | None = None, timeout: float = CMD_TIMEOUT_S
) -> str:
    """Run a short command; return its stdout, raise NetLabError (command + stderr) on failure."""
    line = shlex.join(argv)
    try:
        done = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise NetLabError(f"{line}: timed out after {timeout} s") from exc
    except OSError as exc:
        raise NetLabError(f"{line}: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise NetLabError(f"{line}: exit {done.returncode}: {detail}")
    return done.stdout


def _ip_batch(ns: str, lines: Sequence[str]) -> None:
    """Run ``ip`` commands (without the leading ``ip``) inside one namespace."""
    _command(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n")


def _ns_exec(ns: str, argv: Sequence[str], input: str | None = None) -> str:
    return _command(["ip", "netns", "exec", ns, *argv], input=input)


def _sysctls(ns: str, settings: dict[str, str]) -> None:
    # Written through /proc/sys (per network namespace) so that procps is not needed.
    script = "set -e\n" + "".join(
        f"echo {value} > /proc/sys/{key.replace('.', '/')}\n" for key, value in settings.items()
    )
    _ns_exec(ns, ["sh", "-c", script])


def list_namespaces() -> list[str]:
    """Names of all network namespaces (``ip netns list``)."""
    out = _command(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    """PIDs of the processes in a namespace (``ip netns pids``)."""
    return [int(p) for p in _command(["ip", "netns", "pids", ns]).split()]


def _kill_namespace_processes(namespaces: Sequence[str], deadline_s: float) -> None:
    """SIGKILL every process in the namespaces; wait (bounded) until they are gone."""
    deadline = time.monotonic() + deadline_s
    while True:
        pids = [p for ns in namespaces for p in namespace_pids(ns) if p != os.getpid()]
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise NetLabError(f"processes {alive} in {list(namespaces)} survived SIGKILL")
        time.sleep(0.02)


def _delete_namespaces(namespaces: Sequence[str]) -> None:
    existing = set(list_namespaces())
    for ns in namespaces:
        if ns in existing:
            _command(["ip", "netns", "del", ns])


def cleanup_stale() -> list[str]:
    """Delete lab namespaces whose owning process is gone; return their names.

    A namespace counts as stale when the PID in its name is not a live process, or is this
    process but belongs to no lab open here (a PID reused after a crash).
    """
    me = os.getpid()
    stale = []
    for ns in list_namespaces():
        match = _LAB_NS_RE.match(ns)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == me:
            if any(ns.startswith(prefix) for prefix in _LIVE):
                continue
        elif pid_alive(pid):
            continue
        stale.append(ns)
    if stale:
        _kill_namespace_processes(stale, KILL_WAIT_S)
        _delete_namespaces(stale)
    return stale


_PROBE_RULES = """
table inet netlab_probe {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "lo" masquerade fully-random
    }
}
"""


@functools.cache
def available() -> tuple[bool, str]:
    """Whether a lab can be built here; if not, why (cached for the process)."""
    if not sys.platform.startswith("linux"):
        return False, f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return False, f"`{tool}` not found (apt-get install -y {package})"
    probe = f"{PREFIX}{os.getpid()}-0-probe"
    try:
        _delete_namespaces([probe])
        _command(["ip", "netns", "add", probe])
        try:
            _ns_exec(probe, ["nft", "-f", "-"], input=_PROBE_RULES)
        finally:
            _command(["ip", "netns", "del", probe])
    except NetLabError as exc:
        return False, f"cannot build a network namespace with NAT here: {exc}"
    return True, ""


def require_available() -> None:
    """In a test: skip when the lab cannot be built, but fail under CI=true (CI installs it)."""
    import pytest

    ok, reason = available()
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"network lab unavailable under CI: {reason}", pytrace=False)
    pytest.skip(f"network lab unavailable: {reason}")


def _router_rules(kind: NatKind) -> str:
    if kind == "firewall443":
        outbound = 'iifname "lan0" oifname "wan0" tcp dport 443 accept'
    else:
        outbound = 'iifname "lan0" oifname "wan0" accept'
    masquerade = "masquerade fully-random" if kind == "symmetric" else "masquerade"
    return f"""
table inet netlab {{
    chain input {{
        type filter hook input priority filter; policy drop;
        iifname "lo" accept
        ct state established,related accept
        iifname "lan0" accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        {outbound}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" {masquerade}
    }}
}}
"""


def read_line(proc: subprocess.Popen[Any], timeout: float) -> str:
    """Read one line from ``proc.stdout`` (a pipe) within ``timeout`` seconds.

    Reads the pipe byte by byte without Python-level buffering, so ``proc.communicate()``
    still sees everything after the line. Raises NetLabError on timeout or end of output.
    """
    if proc.stdout is None:
        raise NetLabError("read_line needs stdout=subprocess.PIPE")
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = bytearray()
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise NetLabError(f"no line from {proc.args!r} within {timeout} s (got {data!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1)
        if not chunk:
            raise NetLabError(f"{proc.args!r} ended its output (exit {proc.poll()}), got {data!r}")
        data += chunk
    return data.decode().rstrip("\n")


class NetLab:
    """A NAT lab. Build hosts inside ``with NetLab() as lab:``; all is gone after it."""

    def __init__(self) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}-{next(_SEQ)}-"
        self.internet_ns = self.prefix + "inet"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._next_public = 10  # 10.99.0.10 upwards
        self._next_lan = 1  # 192.168.1.0/24 upwards
        self._next_port = 0
        self._started = False
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> NetLab:
        if self._started:
            raise NetLabError("lab already started")
        self._started = True
        _LIVE[self.prefix] = self
        try:
            cleanup_stale()
            self._add_namespace(self.internet_ns)
            _ip_batch(
                self.internet_ns,
                ["link add br0 type bridge stp_state 0", "link set br0 up"],
            )
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> NetLab:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the lab's processes and delete its namespaces. Safe to call again."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        try:
            self._stop_procs()
        except Exception as exc:
            errors.append(f"stopping processes: {exc}")
        try:
            mine = [ns for ns in list_namespaces() if ns.startswith(self.prefix)]
            _kill_namespace_processes(mine, KILL_WAIT_S)
            # Hosts first, the internet (which holds the bridge) last.
            _delete_namespaces(sorted(mine, key=lambda ns: ns == self.internet_ns))
        except Exception as exc:
            errors.append(f"deleting namespaces: {exc}")
        _LIVE.pop(self.prefix, None)
        if errors:
            raise NetLabError(f"teardown of {self.prefix}*: " + "; ".join(errors))

    def _stop_procs(self) -> None:
        running = [p for p in self._procs if p.poll() is None]
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + KILL_WAIT_S / 2
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        for proc in running:
            proc.wait(KILL_WAIT_S)  # raises TimeoutExpired if even SIGKILL did not work
        for proc in self._procs:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    # -- building -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if not self._started or self._closed:
            raise NetLabError("lab is not open (use `with NetLab() as lab:`)")

    def _add_namespace(self, ns: str, forward: bool = False) -> None:
        _command(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        settings = {
            "net.ipv6.conf.all.disable_ipv6": "1",
            "net.ipv6.conf.default.disable_ipv6": "1",
            "net.ipv4.ip_forward": "1" if forward else "0",
        }
        _sysctls(ns, settings)
        _ip_batch(ns, ["link set lo up"])

    def _claim_name(self, name: str) -> None:
        self._check_open()
        if not _NAME_RE.match(name):
            raise NetLabError(f"bad host name {name!r} (want {_NAME_RE.pattern})")
        if name in self.hosts:
            raise NetLabError(f"host {name!r} exists")

    def _public_address(self) -> str:
        if self._next_public > 250:
            raise NetLabError("out of addresses on the internet bridge")
        self._next_public += 1
        return f"{INTERNET_NET}.{self._next_public - 1}"

    def _plug_into_internet(self, ns: str, ifname: str, addr: str) -> None:
        port = f"p{self._next_port}"
        self._next_port += 1
        _ip_batch(
            self.internet_ns,
            [
                f"link add {port} type veth peer name {ifname} netns {ns}",
                f"link set {port} master br0",
                f"link set {port} up",
            ],
        )
        _ip_batch(ns, [f"addr add {addr}/24 dev {ifname}", f"link set {ifname} up"])

    def public_host(self, name: str, global_addr: str | None = None) -> Host:
        """A host with an address on the internet bridge.

        `global_addr` (in GLOBAL_NET): the host also has this address, and it is the one
        the host's processes use. For tests of rules about public address ranges (what a
        /24 may do); the lab still has no route out, and other hosts reach it only if they
        have a GLOBAL_NET address too (one /8 on the one bridge)."""
        if global_addr is not None and not global_addr.startswith(GLOBAL_NET + "."):
            raise NetLabError(f"global address {global_addr!r} not in {GLOBAL_NET}.0.0.0/8")
        self._claim_name(name)
        ns = f"{self.prefix}h-{name}"
        self._add_namespace(ns)
        addr = self._public_address()
        self._plug_into_internet(ns, "eth0", addr)
        if global_addr is not None:
            _ip_batch(ns, [f"addr add {global_addr}/8 dev eth0"])
            addr = global_addr
        host = Host(name, ns, addr, addr)
        self.hosts[name] = host
        return host

    def nat_host(self, name: str, kind: NatKind) -> Host:
        """A host on a private LAN behind a router of the given kind."""
        self._claim_name(name)
        if kind not in NAT_KINDS:
            raise NetLabError(f"unknown NAT kind {kind!r} (want one of {NAT_KINDS})")
        if self._next_lan > 254:
            raise NetLabError("out of private LANs")
        lan = f"192.168.{self._next_lan}"
        self._next_lan += 1
        rns = f"{self.prefix}r-{name}"
        hns = f"{self.prefix}h-{name}"
        self._add_namespace(rns, forward=True)
        self._add_namespace(hns)
        wan = self._public_address()
        self._plug_into_internet(rns, "wan0", wan)
        # The ruleset goes in before the LAN comes up: nothing is ever forwarded un-NATed.
        _ns_exec(rns, ["nft", "-f", "-"], input=_router_rules(kind))
        _ip_batch(
            rns,
            [
                f"link add lan0 type veth peer name eth0 netns {hns}",
                f"addr add {lan}.1/24 dev lan0",
                "link set lan0 up",
            ],
        )
        _ip_batch(
            hns,
            [
                f"addr add {lan}.2/24 dev eth0",
                "link set eth0 up",
                # Only the internet bridge's subnet is routed: there is no default route.
                f"route add {INTERNET_NET}.0/24 via {lan}.1",
            ],
        )
        router = Host(f"{name}-router", rns, f"{lan}.1", wan, kind)
        host = Host(name, hns, f"{lan}.2", wan, kind, router)
        self.hosts[name] = host
        return host

    # -- running things -----------------------------------------------------------------

    def namespaces(self) -> list[str]:
        """The lab's namespaces, in creation order."""
        return list(self._namespaces)

    def run(self, host: Host, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the host's namespace; teardown kills it."""
        self._check_open()
        if host.ns not in self._namespaces:
            raise NetLabError(f"{host.name!r} is not a host of this lab")
        proc = subprocess.Popen(["ip", "netns", "exec", host.ns, *argv], **popen_kwargs)
        self._procs.append(proc)
        return proc

    def exec(
        self, host: Host, argv: Sequence[str], input: str | None = None, timeout: float = 5.0
    ) -> str:
        """Run a short command inside the host's namespace; return stdout, raise on failure."""
        self._check_open()
        if host.ns not in self._namespaces:
            raise NetLabError(f"{host.name!r} is not a host of this lab")
        return _command(["ip", "netns", "exec", host.ns, *argv], input=input, timeout=timeout)


def _close_all_at_exit() -> None:
    for lab in list(_LIVE.values()):
        try:
            lab.close()
        except Exception as exc:
            print(f"netlab: {exc}", file=sys.stderr)


atexit.register(_close_all_at_exit)
