"""A browser behind a symmetric NAT calls a headless node (aiortc) behind another symmetric
NAT, in the network-namespace lab: no direct path exists, so the call must go through the
supernode's TURN relay, with the credentials the node handed the page. Chromium itself runs
inside the browser user's namespace (`ip netns exec`), talking to its node's control API on
that namespace's loopback. Audio is checked both ways: the page's analyser finds the
node's tone, and the node's recording of the call holds the browser's tone.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.audio import read_wav
from tests.support.browser import (
    CHROMIUM,
    HZ_TOLERANCE,
    dominant_hz,
    launch_args,
    write_tone,
)
from tests.support.netlab import INTERNET_NET, NetLab, require_available
from tests.support.netns_nodes import (
    ATTACH_TIMEOUT_S,
    Node,
    bootstrap_list,
    spawn,
    start_supernodes,
    wait_all_ready,
    wait_for,
)

BROWSER_HZ = 600.0
NODE_HZ = 1000.0
RELAY_SUBNET = f"{INTERNET_NET}.0/24"  # the lab's "internet" is private: allow our relay there
STEP_TIMEOUT_MS = 30_000  # ringing, ICE through the relay, DTLS: generous
TALK_S = 3.0
RECORDING_TIMEOUT_S = 15.0


def tid(name: str) -> str:
    return f'[data-testid="{name}"]'


def chromium_in(ns: str, root: Path) -> Path:
    """A wrapper that starts Debian's Chromium inside network namespace `ns`."""
    wrapper = root / f"chromium-{ns}"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {CHROMIUM} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def recorded_hz(path: Path) -> float:
    """The strongest frequency in a WAV recording (skipping its first half second)."""
    rate, samples = read_wav(path)
    samples = samples[rate // 2 :]
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum[1:]) + 1) * rate / len(samples)


@pytest.fixture(scope="module")
def lab_users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_available()
    root = tmp_path_factory.mktemp("softphone-relay")
    os.chmod(root, 0o755)  # the wrapper and tones are read by the browser too
    with NetLab() as lab:
        (supernode,) = start_supernodes(
            lab, root, 1, ("--turn-port", "3478", "--relay-allow", RELAY_SUBNET)
        )
        bootstrap = bootstrap_list(supernode)
        heard = root / "node-heard"
        heard.mkdir()
        node_tone = write_tone(root / "node.wav", NODE_HZ, seconds=8.0)
        extra = ["--auto-answer", "--answer-play", str(node_tone), "--answer-record", str(heard)]
        headless = spawn(
            lab, lab.nat_host("hl", "symmetric"), "hl", root, "client", bootstrap, extra=extra
        )
        web = spawn(lab, lab.nat_host("web", "symmetric"), "web", root, "client", bootstrap)
        wait_all_ready([headless, web], ATTACH_TIMEOUT_S)
        yield {
            "root": root,
            "supernode": supernode,
            "headless": headless,
            "web": web,
            "heard": heard,
        }


def test_browser_to_headless_node_through_the_relay_with_audio_both_ways(
    lab_users: dict[str, Any],
) -> None:
    from playwright.sync_api import sync_playwright

    root: Path = lab_users["root"]
    web: Node = lab_users["web"]
    headless: Node = lab_users["headless"]
    nodes = [lab_users["supernode"], web, headless]
    code, url, err = web.cli("open", "--print-url", json_out=False)
    assert code == 0, err
    args = launch_args(write_tone(root / "browser.wav", BROWSER_HZ))
    args["executable_path"] = str(chromium_in(web.host.ns, root))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(**args)
        try:
            page = browser.new_context(permissions=["microphone"]).new_page()
            page.goto(url.strip())
            page.wait_for_selector(f'{tid("me")}:text-is("web")')
            page.fill(tid("add-contact-name"), "hl")
            page.click(tid("add-contact-submit"))
            page.wait_for_selector(f'{tid("contact-hl")}[data-presence="online"]')
            started = time.monotonic()
            page.click(tid("call-hl"))
            page.wait_for_selector(
                f'{tid("call-state")}:text-is("active")', timeout=STEP_TIMEOUT_MS
            )
            page.wait_for_selector(f'{tid("call-path")}:text-is("relay")', timeout=STEP_TIMEOUT_MS)
            print(f"click to active through the relay: {time.monotonic() - started:.2f} s")
            time.sleep(TALK_S)
            heard = dominant_hz(page)
            print(f"the browser hears {heard}")
            assert abs(heard["hz"] - NODE_HZ) <= HZ_TOLERANCE
            relay = lab_users["supernode"].status()["sharing"]["relay"]
            print(f"supernode relay while the call runs: {relay['allocations']} allocations")
            assert relay["allocations"] >= 1 and relay["total_bytes_relayed"] > 0
            page.click(tid("hangup"))
            page.wait_for_selector(f'{tid("call-state")}:text-is("ended")')
        finally:
            browser.close()

    def recording() -> Path | None:
        files = sorted(lab_users["heard"].glob("call-*.wav"))
        ended = [c for c in (headless.cli("calls")[1] or []) if c["state"] == "ended"]
        return files[0] if files and ended else None

    path = wait_for("the node's recording", recording, RECORDING_TIMEOUT_S, nodes)
    hz = recorded_hz(path)
    print(f"the headless node heard {hz:.1f} Hz (the browser sent {BROWSER_HZ:.0f} Hz)")
    assert abs(hz - BROWSER_HZ) <= HZ_TOLERANCE
    (call,) = headless.cli("calls")[1]
    assert call["path"] == "relay"
