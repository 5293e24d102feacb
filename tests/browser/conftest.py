"""Browser tests need Debian's Chromium and Playwright: skipped (saying which is missing)
on a machine without them, but under CI=true they must run, so there they fail instead."""

from __future__ import annotations

import os

import pytest

from tests.support.browser import missing


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    lacking = missing()
    if lacking is None or os.environ.get("CI") == "true":
        return
    skip = pytest.mark.skip(reason=f"browser tests need {lacking}")
    for item in items:
        if "tests/browser/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(skip)
