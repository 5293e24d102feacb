"""Serving one node until it is told to stop: service, control API, clean exit."""

from __future__ import annotations

import logging
import socket

from peerphone.daemon.config import ConfigError, NodeConfig, checked_endpoint
from peerphone.daemon.control import start_control
from peerphone.daemon.datadir import DataDir, DataDirError
from peerphone.daemon.policy import Policy
from peerphone.daemon.relay import port_problem
from peerphone.daemon.service import NodeService
from peerphone.endpoints import TCP, UDP, Endpoint
from peerphone.procs import pid_alive

log = logging.getLogger("peerphone.node")
TURN_PORT_OPTION = "--turn-port PORT"


def check_not_running(data: DataDir) -> None:
    """Refuse a second node on one data directory (it would fight over keys and files)."""
    try:
        info = data.read_control()
    except DataDirError:
        return  # none, or unreadable: a stale file from a crash is replaced below
    pid = info.get("pid")
    if isinstance(pid, int) and pid_alive(pid):
        raise DataDirError(f"a node (pid {pid}) is already running with data directory {data.path}")


def ports_to_check(config: NodeConfig) -> list[tuple[Endpoint, str]]:
    """Every fixed port the node will open, with the option that chooses another."""
    udp = checked_endpoint(config.listen)
    control = checked_endpoint(config.control)
    wanted: list[tuple[Endpoint, str]] = [
        (udp, "--listen HOST:PORT"),
        ((TCP, control[1]), "--control 127.0.0.1:PORT"),
    ]
    if config.tcp_listen:
        wanted.append((checked_endpoint(config.tcp_listen, TCP), "--tcp-listen HOST:PORT"))
    if config.role == "supernode" and config.turn_port:
        wanted.append(((UDP, (udp[1][0], config.turn_port)), TURN_PORT_OPTION))
    return [(endpoint, option) for endpoint, option in wanted if endpoint[1][1] != 0]


def check_ports(config: NodeConfig, strict_turn: bool = False) -> str:
    """Open and close every fixed port before the node joins the network: one in use is a
    `ConfigError` naming the option to change, before anyone hears of us.

    The relay's port is the exception unless `strict_turn` (given on this command line):
    a supernode serves without a relay (clients learn the relay's port from their grant,
    so any port would do, but several supernodes on one host all default to 3478). Its
    problem is returned for the log and `status` ("" when every port is free).
    """
    for endpoint, option in ports_to_check(config):
        problem = _port_problem(endpoint, option)
        if not problem:
            continue
        if option != TURN_PORT_OPTION or strict_turn:
            raise ConfigError(problem)
        return problem
    return ""


def _port_problem(endpoint: Endpoint, option: str) -> str:
    kind, (host, port) = endpoint
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM if kind == TCP else socket.SOCK_DGRAM) as sock:
        if kind == TCP:  # as the listener will: a closed connection's port is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return port_problem(endpoint, option, exc)
    return ""


async def serve(
    data: DataDir, config: NodeConfig, strict_turn: bool = False, policy: Policy | None = None
) -> int:
    """Run the node until SIGINT/SIGTERM or a fatal error; return the exit status.
    `strict_turn`: a busy relay port is fatal too (see `check_ports`); `policy`: managed
    mode (already applied to `config`)."""
    relay_problem = check_ports(config, strict_turn)
    service = NodeService(data, config, policy)
    if relay_problem:
        log.warning("this supernode will run no relay: %s", relay_problem)
        service.relay.failure = relay_problem
    await service.start()
    try:
        runner = await start_control(service)
    except OSError as exc:
        await service.shutdown()
        _, address = checked_endpoint(config.control)
        raise ConfigError(port_problem((TCP, address), "--control 127.0.0.1:PORT", exc)) from None
    try:
        await service.stopping.wait()
    finally:
        data.remove_control()
        await service.close_listeners()  # else the control API waits for its WebSocket clients
        await runner.cleanup()
        await service.shutdown()
    return service.exit_status()
