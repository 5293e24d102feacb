"""The command line: simulate writes the promised JSON and refuses bad arguments clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peerphone.cli import main


def test_simulate_writes_report_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    rc = main(
        [
            "simulate",
            "--users",
            "150",
            "--duration",
            "300",
            "--seed",
            "9",
            "--scenario",
            "steady",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["seed"] == 9 and report["users"] == 150 and report["scenario"] == "steady"
    assert set(report["supernodes"]) >= {"count", "fraction", "clients_per_supernode"}
    assert set(report["supernodes"]["clients_per_supernode"]) >= {"p50", "max"}
    assert set(report["lookups"]) >= {
        "attempted",
        "succeeded",
        "success_rate",
        "latency_ms",
        "hops",
    }
    assert set(report["lookups"]["latency_ms"]) == {"p50", "p95", "p99"}
    assert set(report["lookups"]["hops"]) >= {"p50", "max"}
    assert set(report["sim"]) == {"virtual_s", "wall_s", "events"}
    assert "recovery_s" not in report
    table = capsys.readouterr().out
    assert "lookups" in table and "supernodes" in table


def test_disaster_report_has_recovery(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "simulate",
                "--users",
                "150",
                "--duration",
                "720",
                "--scenario",
                "login-storm",
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "recovery_s" in json.loads(out.read_text())


def test_bad_arguments_exit_with_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--scenario", "meteor"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["simulate", "--users", "-5"])
    assert main(["simulate", "--users", "5", "--no-progress"]) == 1
    assert "at least 10 users" in capsys.readouterr().err


def test_unwritable_json_path_is_an_error_not_a_crash(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "r.json"
    assert (
        main(
            [
                "simulate",
                "--users",
                "50",
                "--duration",
                "60",
                "--json",
                str(target),
                "--no-progress",
            ]
        )
        == 1
    )
