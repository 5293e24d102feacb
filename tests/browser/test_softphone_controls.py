"""The softphone's other call controls, clicked in real browsers on loopback nodes: mute
(the other side stops hearing the tone, then hears it again), decline (the caller's page
says the call ended, "declined"), blind transfer (alice transfers bob to carol: carol's
page rings with bob, alice's call ends), and the set-up time a page reports to its node.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.browser import HZ_TOLERANCE, dominant_hz, write_tone
from tests.support.node_procs import NodeProcs, wait_for
from tests.support.softphone import (
    STEP_TIMEOUT_MS,
    Person,
    close_pages,
    open_page,
    start_client,
    start_supernode,
    state_is,
    tid,
)

TONES_HZ = {"alice": 500.0, "bob": 800.0, "carol": 1100.0}
SILENCED_DB = 20.0  # a muted or held side: the tone's peak at least this much lower


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Person]]:
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("controls")
    procs = NodeProcs(root)
    try:
        sn1 = start_supernode(procs, "sn1")
        sn2 = start_supernode(procs, "sn2", sn1)
        nodes = {
            name: start_client(procs, name, bootstrap=[sn1, sn2] if i % 2 else [sn2, sn1])
            for i, name in enumerate(TONES_HZ)
        }
        nodes["alice"].control.request("POST", "/v1/contacts", {"name": "bob"})
        with sync_playwright() as pw:
            out = {
                name: open_page(pw, node, name, write_tone(root / f"{name}.wav", TONES_HZ[name]))
                for name, node in nodes.items()
            }
            yield out
            close_pages(out)
    finally:
        procs.close()


def hears(person: Person, hz: float) -> dict[str, float] | None:
    heard = dominant_hz(person.page)
    return heard if abs(heard["hz"] - hz) <= HZ_TOLERANCE else None


def connect(caller: Person, callee: Person, name: str) -> None:
    """`caller` clicks Call on `name` (`callee`), who answers; both pages active."""
    caller.page.click(tid(f"call-{name}"))
    callee.page.wait_for_selector(f"{tid('incoming-call')}:visible", timeout=STEP_TIMEOUT_MS)
    callee.page.click(tid("answer"))
    for person in (caller, callee):
        person.page.wait_for_selector(state_is("active"), timeout=STEP_TIMEOUT_MS)


def hang_up(person: Person, *others: Person) -> None:
    person.page.click(tid("hangup"))
    for who in (person, *others):
        who.page.wait_for_selector(state_is("ended"), timeout=STEP_TIMEOUT_MS)


def browser_call(person: Person, state: str) -> dict[str, Any]:
    calls = person.node.control.request("GET", "/v1/calls")
    found = [c for c in calls if c["state"] == state and c["endpoint"] == "browser"]
    assert found, calls
    return dict(found[-1])


def test_mute_silences_the_other_side_and_unmute_brings_the_tone_back(
    people: dict[str, Person],
) -> None:
    alice, bob = people["alice"], people["bob"]
    alice.page.wait_for_selector(f'{tid("contact-bob")}[data-presence="online"]')
    connect(alice, bob, "bob")
    talking = wait_for("alice's tone at bob", lambda: hears(bob, TONES_HZ["alice"]), 10.0)

    alice.page.click(tid("mute"))
    alice.page.wait_for_selector(f'{tid("mute")}[aria-pressed="true"]')
    wait_for(
        "bob hears alice no more",
        lambda: (
            True if dominant_hz(bob.page)["peak_db"] < talking["peak_db"] - SILENCED_DB else None
        ),
        10.0,
    )
    assert hears(alice, TONES_HZ["bob"])  # mute is one way: bob still reaches alice
    alice.page.wait_for_selector(state_is("active"))  # muted is not held

    alice.page.click(tid("mute"))  # unmute
    alice.page.wait_for_selector(f'{tid("mute")}[aria-pressed="false"]')
    back = wait_for("alice's tone back at bob", lambda: hears(bob, TONES_HZ["alice"]), 10.0)
    print(f"bob hears alice at {talking['peak_db']:.1f} dB, again at {back['peak_db']:.1f} dB")

    # the page reports the set-up time (click on Call until the media path connected)
    def setup_reported() -> dict[str, Any] | None:
        view = browser_call(alice, "active")
        return view if view["setup_ms"] is not None else None

    view = wait_for("alice's setup_ms in her node's call view", setup_reported, 10.0)
    print(f"alice's browser call: setup_ms {view['setup_ms']}, path {view['path']}")
    assert 0 < view["setup_ms"] < 60_000
    hang_up(alice, bob)


def test_decline_ends_the_call_on_the_callers_page_as_declined(
    people: dict[str, Person],
) -> None:
    alice, bob = people["alice"], people["bob"]
    alice.page.click(tid("call-bob"))
    bob.page.wait_for_selector(f"{tid('incoming-call')}:visible", timeout=STEP_TIMEOUT_MS)
    alice.page.wait_for_selector(state_is("ringing"), timeout=STEP_TIMEOUT_MS)
    bob.page.click(tid("decline"))
    alice.page.wait_for_selector(state_is("ended"), timeout=STEP_TIMEOUT_MS)
    alice.page.wait_for_selector('#call-timer:text-is("declined")', timeout=STEP_TIMEOUT_MS)
    assert bob.page.locator(tid("incoming-call")).is_hidden()
    assert browser_call(alice, "ended")["end_reason"] == "declined"
    alice.page.wait_for_selector('#history li:has-text("declined")')


def test_blind_transfer_rings_carol_with_bob_and_ends_alices_call(
    people: dict[str, Person],
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    connect(alice, bob, "bob")
    alice.page.fill("#transfer-name", "carol")
    alice.page.click("#transfer-submit")

    ringing = carol.page.locator(tid("incoming-call"))
    carol.page.wait_for_selector(f"{tid('incoming-call')}:visible", timeout=STEP_TIMEOUT_MS)
    text = ringing.inner_text()
    print(f"carol's page: {text!r}")
    assert "bob is calling" in text and "transferred by alice" in text
    alice.page.wait_for_selector(state_is("ended"), timeout=STEP_TIMEOUT_MS)
    assert "transferred" in alice.page.inner_text("#call-timer")

    carol.page.click(tid("answer"))
    for person in (bob, carol):
        person.page.wait_for_selector(state_is("active"), timeout=STEP_TIMEOUT_MS)
    assert bob.page.inner_text("#call-peer") == "carol"
    wait_for("bob's tone at carol", lambda: hears(carol, TONES_HZ["bob"]), 10.0)
    wait_for("carol's tone at bob", lambda: hears(bob, TONES_HZ["carol"]), 10.0)
    hang_up(carol, bob)
