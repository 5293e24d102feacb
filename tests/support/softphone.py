"""People with softphone pages: nodes on loopback and a Chromium page logged in to each
(shared by the browser tests; see tests/support/browser.py for the browser itself)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.browser import launch_args, login_url
from tests.support.node_procs import Node, NodeProcs, wait_for

STEP_TIMEOUT_MS = 20_000  # one step of a call (ring, connect): generous on loopback


def tid(name: str) -> str:
    return f'[data-testid="{name}"]'


def state_is(text: str) -> str:
    return f'{tid("call-state")}:text-is("{text}")'


@dataclass
class Person:
    node: Node
    page: Any  # playwright.sync_api.Page
    dialogs: list[str]


def start_supernode(procs: NodeProcs, name: str, *bootstrap: Node) -> Node:
    args = ["--role", "supernode", "--tcp-listen", "127.0.0.1:0", "--turn-port", "0"]
    for other in bootstrap:
        args += ["--bootstrap", other.udp_address()]
    node = procs.start(name, *args)
    wait_for(f"{name} online", node.online)
    return node


def start_client(procs: NodeProcs, name: str, *extra: str, bootstrap: list[Node]) -> Node:
    args = ["--role", "client", *extra]
    for other in bootstrap:
        args += ["--bootstrap", other.udp_address()]
    node = procs.start(name, *args)
    wait_for(f"{name} online", node.online)
    return node


def open_page(pw: Any, node: Node, name: str, tone: Path, width: int = 1100) -> Person:
    """A Chromium whose microphone plays `tone`, logged in to `node`'s softphone page
    (`pw`: a sync Playwright). Dialogs are dismissed and kept (none should open)."""
    browser = pw.chromium.launch(**launch_args(tone))
    context = browser.new_context(
        permissions=["microphone"], viewport={"width": width, "height": 860}
    )
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(login_url(node))
    page.wait_for_selector(f'{tid("me")}:text-is("{name}")')
    return Person(node, page, dialogs)


def close_pages(people: dict[str, Person]) -> None:
    for person in people.values():
        person.page.context.browser.close()
