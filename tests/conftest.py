"""Every test is marked with its level, the folder it lives in (tests/unit, loopback,
netns, acceptance, browser), so that `scripts/test.sh -m unit` runs the fast ones alone."""

from __future__ import annotations

from pathlib import Path

import pytest

LEVELS = ("unit", "loopback", "netns", "acceptance", "browser")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
        level = parts[0] if parts and parts[0] in LEVELS else None
        if level is None:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in one of tests/{LEVELS}")
        item.add_marker(getattr(pytest.mark, level))
