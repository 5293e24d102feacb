"""The `peerphone` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from peerphone import __version__, cli_node
from peerphone.errors import PeerphoneError
from peerphone.sim.world import SCENARIOS, SimConfig, simulate


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peerphone", description=__doc__)
    parser.add_argument("--version", action="version", version=f"peerphone {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run the overlay in the deterministic simulator")
    sim.add_argument("--users", type=_positive_int, default=5000)
    sim.add_argument("--duration", type=_positive_float, default=1800.0, help="simulated seconds")
    sim.add_argument("--scenario", choices=SCENARIOS, default="steady")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument(
        "--hostile-every",
        type=int,
        default=0,
        metavar="N",
        help="one hostile supernode per N at start that forges names next to it (0: none)",
    )
    sim.add_argument(
        "--hostile-per-24",
        type=_positive_int,
        default=1,
        metavar="K",
        help="hostile supernodes per attacked name, from one /24",
    )
    sim.add_argument("--json", type=Path, help="also write the report as JSON to this path")
    sim.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cli_node.add_commands(sub)
    return parser


def summary_table(report: dict[str, Any]) -> str:
    """The report as a short human-readable table."""
    sn = report["supernodes"]
    lk = report["lookups"]
    rows = [
        ("scenario", f"{report['scenario']} (seed {report['seed']})"),
        ("users / online at end", f"{report['users']} / {report['online']}"),
        (
            "supernodes",
            f"{sn['count']} ({sn['fraction'] * 100:.2f} % of online nodes, "
            f"max {sn['fraction_max'] * 100:.2f} %)",
        ),
        (
            "clients per supernode",
            f"p50 {sn['clients_per_supernode']['p50']:.0f}, max "
            f"{sn['clients_per_supernode']['max_seen']} (limit "
            f"{sn['clients_per_supernode']['admission_limit']})",
        ),
        ("promotions / demotions", f"{sn['promotions']} / {sn['demotions']}"),
        ("lookups", f"{lk['succeeded']}/{lk['attempted']} ok ({lk['success_rate'] * 100:.3f} %)"),
        ("lookups never judged", _lost(lk)),
        ("login to findable", _findable(report["findable"])),
        ("lookup latency", "p50 {p50} ms, p95 {p95} ms, p99 {p99} ms".format(**lk["latency_ms"])),
        ("lookup hops", "p50 {p50:.0f}, p99 {p99:.0f}, max {max}".format(**lk["hops"])),
        (
            "presence propagation",
            "p50 {p50} ms, p95 {p95} ms".format(**report["presence"]["propagation_ms"]),
        ),
        (
            "presence updates",
            "{delivered}/{expected} heard in time, {missing} missing, {unjudged} not judged".format(
                **report["presence"]
            ),
        ),
    ]
    calls = report["calls"]
    rows.append(
        (
            "calls",
            f"{calls['answered']}/{calls['attempted']} answered, ringing after p50 "
            f"{calls['ringing_ms']['p50']} ms / p95 {calls['ringing_ms']['p95']} ms",
        )
    )
    if "adversary" in report:
        adv = report["adversary"]
        rows.append(
            (
                "hostile supernodes",
                f"{adv['hostile_supernodes']} ({adv['per_24']} per /24): {adv['forged_sent']} "
                f"forged answers sent, {adv['forged_accepted']} accepted by clients",
            )
        )
    if "harm" in report:
        harm = report["harm"]
        worst = harm["worst_window_success_rate"]
        rows.append(
            (
                "harm of the event",
                f"{harm['victims']} nodes down; {harm['lookups_failed']}/{harm['lookups']} "
                f"lookups failed, worst 10 s window "
                f"{'unknown' if worst is None else f'{worst * 100:.1f} %'}, "
                f"{harm['windows_without_lookups']} windows without lookups "
                f"(until {harm['until_s']:.0f} s)",
            )
        )
        rows.append(("logins after the event", _findable(harm["logins"])))
    if "recovery_s" in report:
        rec = report["recovery_s"]
        rows.append(("recovery after event", "not recovered" if rec is None else f"{rec:.0f} s"))
    sim = report["sim"]
    rows.append(
        (
            "simulation",
            f"{sim['virtual_s']:.0f} virtual s in {sim['wall_s']:.1f} wall s, "
            f"{sim['events']} events",
        )
    )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _lost(lookups: dict[str, Any]) -> str:
    lost = ", ".join(f"{n} {why}" for why, n in lookups["lost"].items() if n) or "none"
    return f"{lost} (of {lookups['issued']} issued)"


def _findable(findable: dict[str, Any]) -> str:
    ms = findable["login_to_findable_ms"]
    return (
        f"{findable['findable']}/{findable['logins']} logins, p50 {ms['p50']} ms, "
        f"p99 {ms['p99']} ms, max {ms['p100']} ms; at most {findable['unfindable_max']} "
        f"logged in but not findable at once"
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    config = SimConfig(
        users=args.users,
        duration_s=args.duration,
        scenario=args.scenario,
        seed=args.seed,
        hostile_every=args.hostile_every,
        hostile_cluster=args.hostile_per_24,
    )
    progress = None
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(
            total=int(config.duration_s),
            unit="vs",
            desc="simulating",
            file=sys.stderr,
            disable=None,
        )

        def progress(t: float) -> None:
            assert bar is not None
            bar.update(int(t) - bar.n)

    try:
        report = simulate(config, progress)
    finally:
        if bar is not None:
            bar.update(int(config.duration_s) - bar.n)
            bar.close()
    print(summary_table(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.json}")
    return 0


EXIT_INTERRUPTED = 130  # Ctrl-C (the shell's code for SIGINT)


def _stdout_closed() -> int:
    """The reader of our output went away (`peerphone status | head -3`): not an error.
    Later writes (the interpreter's last flush) go nowhere instead of failing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "simulate":
            return cmd_simulate(args)
        code = cli_node.dispatch(args)
        if code is not None:
            return code
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (PeerphoneError, ValueError) as exc:
        print(f"peerphone: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"peerphone: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
