"""Trust-on-first-use pins, kept across restarts: DIR/pins.json.

Every name this node looked up, called or was called by is pinned to the user key that the
directory's replicas agreed on the first time (overlay `KeyPinned`). A later answer that binds
the name to another key is refused ("bound to a different key than the pinned one") — also
after a restart, which is the point: a defence that lives in memory only is lost exactly when
an attacker would wait for it. The file is JSON (names and hex keys, for comparing
fingerprints by eye), written atomically, owner-only. A damaged file stops the node with a
clear error instead of being replaced: silently starting with no pins would drop the defence.
"""

from __future__ import annotations

import json
from pathlib import Path

from peerphone.daemon.datadir import DataDirError, write_atomic
from peerphone.records import valid_username

PINS_FILE = "pins.json"
MAX_PINS = 100_000  # names pinned by one node (~100 B each on disk)
MAX_PINS_BYTES = 16 * 1024 * 1024  # a larger file is refused as damaged
FORMAT_VERSION = 1


class Pins:
    """The persisted pins of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / PINS_FILE
        self.pins: dict[str, bytes] = {}

    def load(self) -> dict[str, bytes]:
        """Read the pins (none if the file does not exist); raise DataDirError if damaged."""
        if not self.path.exists():
            self.pins = {}
            return {}
        try:
            if self.path.stat().st_size > MAX_PINS_BYTES:
                raise ValueError(f"larger than {MAX_PINS_BYTES} bytes")
            doc = json.loads(self.path.read_bytes())
            if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"not a version {FORMAT_VERSION} pins file")
            raw = doc.get("pins")
            if not isinstance(raw, dict):
                raise ValueError("'pins' is not a table")
            pins: dict[str, bytes] = {}
            for name, key_hex in raw.items():
                if not valid_username(name) or not isinstance(key_hex, str):
                    raise ValueError(f"bad entry {name!r}")
                key = bytes.fromhex(key_hex)
                if len(key) != 32:
                    raise ValueError(f"the key of {name!r} is not 32 bytes")
                pins[name] = key
        except (OSError, ValueError, RecursionError) as exc:
            raise DataDirError(
                f"{self.path} is damaged ({exc}); it holds the keys this node trusts for other "
                "users: repair it, or move it aside to start without them"
            ) from None
        self.pins = dict(sorted(pins.items())[:MAX_PINS])
        return dict(self.pins)

    def add(self, username: str, key: bytes) -> bool:
        """Pin `username` to `key` unless it is pinned already; True if the file changed."""
        if username in self.pins or len(self.pins) >= MAX_PINS or not valid_username(username):
            return False
        self.pins[username] = key
        table = {n: k.hex() for n, k in sorted(self.pins.items())}
        doc = {"version": FORMAT_VERSION, "pins": table}
        write_atomic(self.path, json.dumps(doc, indent=1).encode(), private=True)
        return True
