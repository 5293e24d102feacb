"""The control API's description (daemon/openapi.json, README) names every route the
app serves, and no route it does not."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DAEMON = ROOT / "src" / "peerphone" / "daemon"
ACTIONS = ("answer", "hangup", "hold", "transfer")  # control.py ACTION_STATES


def served_routes() -> set[str]:
    source = (DAEMON / "control.py").read_text()
    routes = set(re.findall(r'add_(?:get|post|delete)\("(/v1/[^"]+)"', source))
    action = "/v1/calls/{call_id}/{action}"
    if action in routes:
        routes.discard(action)
        routes.update(f"/v1/calls/{{call_id}}/{name}" for name in ACTIONS)
    return routes


def test_openapi_lists_every_route() -> None:
    doc = json.loads((DAEMON / "openapi.json").read_text())
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == served_routes()


def test_readme_lists_every_route() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Control API") :]
    for route in served_routes():
        assert route.replace("{call_id}", "{id}") in section, route
