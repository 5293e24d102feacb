"""The softphone warns loudly when a contact's key changes (issue 10): alice's buddy list
pins one key for bob (her contacts file, as after an earlier conversation), the directory's
replicas agree bob's name is bound to another; the page shows the warning with both
fingerprints, and the node keeps the old pin (calls to bob are refused)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerphone.identity import KeyPair
from tests.support.browser import write_tone
from tests.support.node_procs import NodeProcs
from tests.support.softphone import (
    STEP_TIMEOUT_MS,
    close_pages,
    open_page,
    start_client,
    start_supernode,
)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[NodeProcs]:
    nodes = NodeProcs(tmp_path)
    try:
        yield nodes
    finally:
        nodes.close()


def test_a_contact_whose_key_changed_is_shown_with_a_warning(procs: NodeProcs) -> None:
    from playwright.sync_api import sync_playwright

    sn1 = start_supernode(procs, "sn1")
    sn2 = start_supernode(procs, "sn2", sn1)
    bob = start_client(procs, "bob", bootstrap=[sn1, sn2])
    old_key = KeyPair.generate().public  # the key alice trusted for "bob" before
    alice_dir = procs.root / "alice"
    alice_dir.mkdir(mode=0o700)
    contacts = alice_dir / "contacts.toml"
    contacts.write_text(f'[[contact]]\nname = "bob"\nkey = "{old_key.hex()}"\n')
    os.chmod(contacts, 0o600)
    alice = start_client(procs, "alice", bootstrap=[sn2, sn1])
    with sync_playwright() as pw:
        person = open_page(pw, alice, "alice", write_tone(procs.root / "a.wav", 500.0))
        try:
            warning = person.page.wait_for_selector(".key-warning", timeout=STEP_TIMEOUT_MS)
            assert warning is not None
            text = warning.inner_text()
            print(f"warning shown: {text}")
            assert "bob's key changed" in text
            assert person.dialogs == []
        finally:
            close_pages({"alice": person})
    # the pin stands: the node still trusts the old key, and says why it will not call
    listed = {c["name"]: c for c in alice.control.request("GET", "/v1/contacts")}
    assert listed["bob"]["pinned_key"] == old_key.hex(), listed
    assert listed["bob"]["owner"] == bob.status()["user_key"], listed
    assert listed["bob"]["key_changed"] is True
    # and the terminal says it too
    shown = subprocess.run(
        [sys.executable, "-m", "peerphone", "contacts", "list", "--data-dir", str(alice_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    print(shown)
    assert "WARNING: key changed from " + old_key.hex()[:16] in shown
