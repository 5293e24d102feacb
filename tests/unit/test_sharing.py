"""`peerphone sharing` without a network: the ledger's persistence and UTC roll-over on an
injected clock, the meter's accounting (IP headers, only while a category counts), role
changes, the view and its text, and the command's errors and Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import calendar
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest

from peerphone import cli
from peerphone.daemon import sharing_cli
from peerphone.daemon.config import NodeConfig
from peerphone.daemon.datadir import DataDir
from peerphone.daemon.policy import parse_policy
from peerphone.daemon.sharing import (
    CAP_COUNTS,
    DIRECTORY,
    IPV4_UDP_HEADER_BYTES,
    IPV6_UDP_HEADER_BYTES,
    LEDGER_FILE,
    RELAY,
    Flow,
    Ledger,
    Sharing,
    SharingMeter,
    SharingSource,
    load_ledger,
    save_ledger,
)
from peerphone.daemon.texts import sharing_text
from peerphone.nat.limits import WireCount


def utc(text: str) -> float:
    """Unix seconds of "YYYY-MM-DD HH:MM:SS" in UTC."""
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")))


# -- the ledger: today and this month, across restarts -----------------------------------


def test_totals_survive_a_restart_and_roll_over_at_utc_midnight(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    ledger = Ledger(utc("2025-03-14 23:59:50"))
    ledger.add(RELAY, 1000, 2000, utc("2025-03-14 23:59:50"))
    ledger.add(DIRECTORY, 10, 20, utc("2025-03-14 23:59:51"))
    save_ledger(path, ledger)

    again = load_ledger(path, utc("2025-03-14 23:59:55"))  # restarted the same day
    assert (again.day, again.month) == ("2025-03-14", "2025-03")
    assert again.today[RELAY] == Flow(1000, 2000) and again.today[DIRECTORY] == Flow(10, 20)
    assert again.this_month[RELAY] == Flow(1000, 2000)

    again.add(RELAY, 5, 7, utc("2025-03-15 00:00:01"))  # a second after midnight UTC
    assert again.day == "2025-03-15"
    assert again.today[RELAY] == Flow(5, 7) and again.today[DIRECTORY] == Flow()
    assert again.this_month[RELAY] == Flow(1005, 2007)
    assert again.this_month[DIRECTORY] == Flow(10, 20)


def test_a_restart_after_midnight_starts_a_new_day_and_keeps_the_month(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    ledger = Ledger(utc("2025-03-14 23:59:59"))
    ledger.add(RELAY, 300, 400, utc("2025-03-14 23:59:59"))
    save_ledger(path, ledger)
    again = load_ledger(path, utc("2025-03-15 00:00:05"))  # down over midnight
    assert again.day == "2025-03-15" and again.today[RELAY] == Flow()
    assert again.this_month[RELAY] == Flow(300, 400)


def test_the_month_rolls_over_on_the_first_in_utc(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    ledger = Ledger(utc("2024-02-29 23:00:00"))  # a leap day, the month's last
    ledger.add(DIRECTORY, 1, 2, utc("2024-02-29 23:59:59"))
    save_ledger(path, ledger)
    again = load_ledger(path, utc("2024-02-29 23:59:59"))
    again.add(DIRECTORY, 3, 4, utc("2024-03-01 00:00:00"))
    assert (again.day, again.month) == ("2024-03-01", "2024-03")
    assert again.today[DIRECTORY] == Flow(3, 4) and again.this_month[DIRECTORY] == Flow(3, 4)
    # and a restart in a later month finds nothing of the old one
    save_ledger(path, again)
    later = load_ledger(path, utc("2024-04-02 12:00:00"))
    assert later.this_month[DIRECTORY] == Flow() and later.month == "2024-04"


def test_a_damaged_ledger_is_set_aside_and_counting_starts_again(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    for text in ("{not json", json.dumps({"version": 1, "day": 3}), json.dumps([1, 2])):
        path.write_text(text)
        ledger = load_ledger(path, utc("2025-01-01 00:00:00"))
        assert ledger.today[RELAY] == Flow() and not path.exists()
        assert path.with_suffix(".bad").read_text() == text
    bad_counts = Ledger(0.0).to_json()
    bad_counts["today"][RELAY] = [-1, 2]
    path.write_text(json.dumps(bad_counts))
    assert load_ledger(path, 0.0).today[RELAY] == Flow()


def test_the_meter_counts_growth_only_while_its_category_counts() -> None:
    now = utc("2025-05-01 10:00:00")
    meter = SharingMeter(Ledger(now), window_s=5)
    counting = {DIRECTORY: False, RELAY: True}
    meter.update({DIRECTORY: Flow(100, 200), RELAY: Flow(10, 20)}, counting, now)
    assert meter.ledger.today[DIRECTORY] == Flow() and meter.since_start[RELAY] == Flow(10, 20)
    counting[DIRECTORY] = True  # became a supernode: only what comes from now on counts
    meter.update({DIRECTORY: Flow(150, 260), RELAY: Flow(10, 20)}, counting, now + 1)
    assert meter.ledger.today[DIRECTORY] == Flow(50, 60)
    for second in range(2, 8):  # 1000 B/s up, 500 down, for six seconds
        up, down = 150 + 1000 * (second - 1), 260 + 500 * (second - 1)
        meter.update({DIRECTORY: Flow(up, down), RELAY: Flow(10, 20)}, counting, now + second)
    assert meter.rate(DIRECTORY, now + 8) == (1000.0, 500.0)  # seconds 3-7, all full
    assert meter.rate(RELAY, now + 8) == (0.0, 0.0)


# -- the node's sharing, on a fake service ------------------------------------------------


class FakeCore:
    def __init__(self) -> None:
        self.is_supernode = False
        self.supernode: Any = None

    def snapshot(self) -> Any:
        return argparse.Namespace(supernode=self.supernode)


class FakeRuntime:
    def __init__(self, address: tuple[str, int]) -> None:
        self.stats: Counter[str] = Counter()
        self.address = address
        self.core = FakeCore()


class FakeRelay:
    def __init__(self) -> None:
        self.wire = WireCount()
        self.failure = ""
        self.running: dict[str, Any] | None = None

    def sharing(self) -> dict[str, Any] | None:
        return self.running


class FakeService:
    def __init__(self, path: Path, address: tuple[str, int] = ("10.99.0.2", 4433)) -> None:
        self.runtime = FakeRuntime(address)
        self.relay = FakeRelay()
        self.config = NodeConfig(role="supernode")
        self.data = DataDir(path)
        self.policy: Any = None
        self.role_reason = "configured: --role supernode"
        self.listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self.events: list[dict[str, Any]] = []
        self.heard = asyncio.Event()

    def broadcast(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.heard.set()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_sharing(service: FakeService, clock: Clock) -> Sharing:
    return Sharing(cast(SharingSource, service), clock=clock, cpu=lambda: 12.5)


def test_bytes_are_ip_packets_with_their_headers(tmp_path: Path) -> None:
    clock = Clock(utc("2025-05-01 10:00:00"))
    service = FakeService(tmp_path)
    sharing = make_sharing(service, clock)
    stats = service.runtime.stats
    stats.update(udp_bytes_out=1000, udp_datagrams_out=10, udp_bytes_in=500, udp_datagrams_in=4)
    stats.update(tcp_bytes_out=77, tcp_bytes_in=33)
    wire = service.relay.wire
    for size in (100, 200, 300):
        wire.udp_received(size)
    wire.udp_sent(160)
    wire.tcp_in, wire.tcp_out = 40, 44
    h = IPV4_UDP_HEADER_BYTES
    assert sharing.readings() == {
        DIRECTORY: Flow(1000 + 10 * h + 77, 500 + 4 * h + 33),
        RELAY: Flow(160 + h + 44, 600 + 3 * h + 40),
    }
    service.runtime.address = ("2001:db8::2", 4433)
    assert sharing.readings()[RELAY] == Flow(160 + IPV6_UDP_HEADER_BYTES + 44, 600 + 144 + 40)


def test_directory_traffic_counts_only_while_a_supernode(tmp_path: Path) -> None:
    clock = Clock(utc("2025-05-01 10:00:00"))
    service = FakeService(tmp_path)
    sharing = make_sharing(service, clock)
    stats = service.runtime.stats
    stats.update(udp_bytes_out=1000, udp_datagrams_out=10)
    sharing.sample()  # a client: its overlay traffic is its own
    service.runtime.core.is_supernode = True
    stats.update(udp_bytes_out=2000, udp_datagrams_out=10)
    clock.now += 1
    sharing.sample()
    assert sharing.meter.since_start[DIRECTORY] == Flow(2000 + 10 * IPV4_UDP_HEADER_BYTES, 0)


def test_role_changes_are_kept_newest_first_across_restarts(tmp_path: Path) -> None:
    clock = Clock(utc("2025-05-01 10:00:00"))
    service = FakeService(tmp_path)
    sharing = make_sharing(service, clock)
    sharing.role_changed(True, "configured: --role supernode")
    sharing.role_changed(True, "configured: --role supernode")  # the same again: kept once
    clock.now += 60
    sharing.role_changed(False, "cap reached: stepping down")
    sharing.save()
    restarted = make_sharing(service, clock)
    restarted.role_changed(False, "cap reached: stepping down")  # this run's first: kept
    roles = restarted.view()["role_changes"]
    assert [(r["role"], r["reason"]) for r in roles] == [
        ("client", "cap reached: stepping down"),
        ("client", "cap reached: stepping down"),
        ("supernode", "configured: --role supernode"),
    ]


def test_run_samples_saves_and_tells_the_listeners(tmp_path: Path) -> None:
    clock = Clock(utc("2025-05-01 10:00:00"))
    service = FakeService(tmp_path)
    service.runtime.core.is_supernode = True
    service.listeners.add(asyncio.Queue())
    sharing = make_sharing(service, clock)

    async def run_a_while() -> None:
        task = asyncio.create_task(sharing.run())
        async with asyncio.timeout(10):
            await service.heard.wait()  # the first sample, a second after the start
        service.runtime.stats.update(udp_bytes_in=100, udp_datagrams_in=1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run_a_while())
    assert [e["type"] for e in service.events] == ["Sharing"]
    saved = json.loads((tmp_path / LEDGER_FILE).read_text())  # saved when it stopped
    assert saved["today"][DIRECTORY] == [0, 100 + IPV4_UDP_HEADER_BYTES]


def relay_running() -> dict[str, Any]:
    return {
        "urls": ["stun:10.99.0.2:3478", "turn:10.99.0.2:3478?transport=udp"],
        "allocations": 1,
        "rate_kbps": 56.0,
        "cap_kbps": 200.0,
        "draining": False,
        "refusing_allocations": False,
        "total_bytes_relayed": 9000,
        "per_allocation": [
            {
                "client": "10.99.0.7:5000",
                "transport": "udp",
                "relayed": "10.99.0.2:40000",
                "expires_in_s": 500.0,
                "peers": ["10.99.0.8"],
                "bytes_to_peers": 4000,
                "bytes_from_peers": 5000,
                "packets_dropped": 0,
            }
        ],
        "drops": {},
    }


def test_the_view_and_its_text_for_a_supernode(tmp_path: Path) -> None:
    clock = Clock(utc("2025-05-01 10:00:00"))
    service = FakeService(tmp_path)
    core = service.runtime.core
    core.is_supernode = True
    core.supernode = argparse.Namespace(clients_served=3, backup_for=1, records_held=12)
    service.relay.running = relay_running()
    service.config.share.up_kbps = 200
    sharing = make_sharing(service, clock)
    sharing.role_changed(True, "configured: --role supernode")
    service.relay.wire.udp_sent(7 * 1000 - IPV4_UDP_HEADER_BYTES)  # 7000 B in this second
    sharing.sample()
    clock.now += 1
    view = sharing.view()
    assert view["role"] == "supernode" and view["managed"] is None
    relay = view["categories"][RELAY]
    assert relay["cap"] == {
        "bytes_per_s": 25000.0,
        "counts": CAP_COUNTS[RELAY],
        "now_bytes_per_s": 1400.0,  # 7000 B over the last 5 s
    }
    assert view["categories"][DIRECTORY]["cap"]["bytes_per_s"] == 125_000.0  # 1000 kbit/s
    assert relay["today"]["cap_bytes"] is None  # the volume caps: both categories together
    assert view["volume"] == {
        "today_bytes": 7000,
        "today_cap_bytes": 5_000_000_000,
        "month_bytes": 7000,
        "month_cap_bytes": 50_000_000_000,
    }
    assert view["relay"]["sessions"][0]["peers"] == ["10.99.0.8"]
    assert (view["clients_served"], view["records_held"]) == (3, 12)
    assert view["cpu"]["process_s"] == 12.5 and view["cpu"]["cap_percent"] == 50
    json.dumps(view)  # the API's body
    text = sharing_text(view)
    assert "role        supernode: configured: --role supernode" in text
    assert "cap 200 kbit/s of what the relay sends (packets over it dropped; new calls" in text
    assert "refused at 80 %): 11.2 kbit/s (6 %)" in text
    assert "volume      today 7000 B of 5000 MB (0 %), this month 7000 B of 50000 MB" in text
    assert "for 10.99.0.7:5000 (udp) to 10.99.0.8: 4000 B out, 5000 B in" in text
    assert "3 served (backup for 1) of at most 600" in text


def test_a_managed_node_says_so(tmp_path: Path) -> None:
    service = FakeService(tmp_path)
    policy_path = Path("/etc/peerphone/policy.toml")
    node_id = "ab" * 32
    service.policy = parse_policy(
        f'listen = "0.0.0.0:5060"\n[[supernodes]]\nnode_id = "{node_id}"\n'
        'address = "192.0.2.10:4433"\n',
        policy_path,
    )
    service.config = NodeConfig(role="client")
    service.role_reason = f"client: managed by {policy_path} (never serves)"
    sharing = make_sharing(service, Clock(utc("2025-05-01 10:00:00")))
    view = sharing.view()
    assert view["managed"]["file"] == str(policy_path) and view["consented"] is False
    text = sharing_text(view)
    assert f"managed by {policy_path}: fixed role client (never a supernode" in text
    assert "supernodes only abababab at 192.0.2.10:4433" in text
    assert "none: only a supernode serves clients" in text


# -- the command ----------------------------------------------------------------------------


def test_no_node_running_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["sharing", "--data-dir", str(tmp_path)]) == 1
    assert "no node is running with data directory" in capsys.readouterr().err


def test_an_unknown_flag_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sharing", "--data-dir", str(tmp_path), "--every", "2"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --every 2" in capsys.readouterr().err


def test_watch_ends_quietly_on_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    service = FakeService(tmp_path)
    view = make_sharing(service, Clock(utc("2025-05-01 10:00:00"))).view()
    answers: list[Any] = [view, view, KeyboardInterrupt()]

    class FakeClient:
        def __init__(self, data_dir: Path) -> None:
            pass

        def request(self, method: str, path: str) -> Any:
            assert (method, path) == ("GET", "/v1/sharing")
            answer = answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

    monkeypatch.setattr(sharing_cli, "ControlClient", FakeClient)
    monkeypatch.setattr(sharing_cli, "WATCH_INTERVAL_S", 0.01)
    args = argparse.Namespace(data_dir=tmp_path, watch=True, json=True)
    assert sharing_cli.cmd_sharing(args) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["role"] for line in out.splitlines()] == ["client", "client"]
    assert err == ""


def test_the_shedding_ladder_is_shown(tmp_path: Path) -> None:
    import dataclasses

    from peerphone.daemon.duty import DutyLadder
    from tests.unit.test_duty import CALM, CAPS, run

    clock = Clock(utc("2025-05-01 10:00:00"))
    sharing = make_sharing(FakeService(tmp_path), clock)
    ladder = DutyLadder(CAPS, clock.now)
    run(ladder, dataclasses.replace(CALM, relay_up_bytes_per_s=24_000.0), clock.now, 12)
    sharing.duty_view = lambda now: {"consent": {}, **ladder.view(now)}
    view = sharing.view()
    assert view["duty"]["level"] == 3 and view["duty"]["declines_promotion"] is None
    text = sharing_text(view)
    assert "duty        refuse new relay allocations (relay: sending 192 kbit/s of its cap" in text
    assert "  reached   relay: sending 192 kbit/s of its cap 200 kbit/s (busy from 80%)" in text
    assert "  taken     stop admitting clients 1x, redirect newest clients 1x, refuse new" in text
    assert "2025-05-01 10:00:05 UTC  stop admitting clients -> redirect newest clients" in text
