"""What a node keeps in its data directory, and how it is written.

    DIR/config.toml     settings (config.py)
    DIR/node.key        the node's Ed25519 private key, 32 raw bytes, mode 0600
    DIR/user.key        the user's Ed25519 private key (signs name and presence), 0600
    DIR/host_cache.bin  msgpack list of supernode member records, checked again on load
    DIR/contacts.toml   the buddy list with the user key pinned at first sight, 0600
    DIR/control.json    where the running node's control API listens and its token, 0600
    DIR/node.log        structured log (JSON lines), 0600
    DIR/sessions.json   session history and measured upload (measure.py), 0600

DIR itself is 0700, made so at every start (`create`) even if it existed before.

Every write goes to a temporary file that is renamed over the old one, so a crash leaves
the old or the new file, never half of one. Files are read with size limits; a damaged
file is a clear error (keys, contacts) or is set aside and ignored (host cache).
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import tomli_w

from peerphone.errors import DecodeError, PeerphoneError
from peerphone.identity import KeyPair
from peerphone.records import Record, decode_record, encode_record, valid_username

log = logging.getLogger(__name__)

KEY_BYTES = 32
MAX_HOST_CACHE_BYTES = 4 * 1024 * 1024
MAX_HOST_CACHE_RECORDS = 1_000  # supernodes remembered across restarts
MAX_CONTACTS_BYTES = 1024 * 1024
MAX_CONTROL_BYTES = 4096


class DataDirError(PeerphoneError):
    """A file in the data directory is missing, unreadable or damaged."""


def write_atomic(path: Path, data: bytes, private: bool) -> None:
    """Replace `path` with `data` in one rename; `private` files are readable by the owner only."""
    tmp = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(tmp, flags, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_limited(path: Path, limit: int) -> bytes:
    if path.stat().st_size > limit:
        raise DataDirError(f"{path}: larger than {limit} bytes")
    return path.read_bytes()


@dataclass(slots=True)
class Contact:
    """A buddy: a username and, once seen, the user key pinned for it."""

    name: str
    key: bytes | None = None


class DataDir:
    """The files of one node (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self) -> None:
        """Make the directory, or close an existing one: owner only (it holds the keys)."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)

    @property
    def log_file(self) -> Path:
        return self.path / "node.log"

    # -- keys -------------------------------------------------------------------------------

    def keys(self) -> tuple[KeyPair, KeyPair, bool]:
        """Node and user keys, created on first use; the flag says they were just made."""
        node, user = self.path / "node.key", self.path / "user.key"
        created = False
        for path in (node, user):
            if not path.exists():
                write_atomic(path, KeyPair.generate().private_bytes(), private=True)
                created = True
        return self._key(node), self._key(user), created

    def _key(self, path: Path) -> KeyPair:
        seed = _read_limited(path, KEY_BYTES)
        if len(seed) != KEY_BYTES:
            raise DataDirError(f"{path}: a key file holds exactly {KEY_BYTES} bytes")
        return KeyPair.from_seed(seed)

    # -- host cache ---------------------------------------------------------------------

    def load_host_cache(self) -> list[Record]:
        """Saved member records; a damaged file is renamed aside and an empty cache used."""
        path = self.path / "host_cache.bin"
        if not path.exists():
            return []
        try:
            items = msgspec.msgpack.decode(
                _read_limited(path, MAX_HOST_CACHE_BYTES), type=list[bytes]
            )
            return [decode_record(item) for item in items[:MAX_HOST_CACHE_RECORDS]]
        except (msgspec.DecodeError, DecodeError, DataDirError) as exc:
            path.replace(path.with_suffix(".bad"))
            log.warning("host cache %s unreadable (%s): set aside, starting empty", path, exc)
            return []

    def save_host_cache(self, records: list[Record]) -> None:
        items = [encode_record(r) for r in records[:MAX_HOST_CACHE_RECORDS]]
        write_atomic(self.path / "host_cache.bin", msgspec.msgpack.encode(items), private=False)

    # -- contacts -----------------------------------------------------------------------

    def load_contacts(self) -> list[Contact]:
        path = self.path / "contacts.toml"
        if not path.exists():
            return []
        try:
            data = tomllib.loads(_read_limited(path, MAX_CONTACTS_BYTES).decode("utf-8"))
            contacts = [_contact(item) for item in data.get("contact", [])]
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError, TypeError) as exc:
            raise DataDirError(f"{path}: {exc}") from None
        return contacts

    def save_contacts(self, contacts: list[Contact]) -> None:
        items: list[dict[str, Any]] = []
        for contact in contacts:
            item: dict[str, Any] = {"name": contact.name}
            if contact.key is not None:
                item["key"] = contact.key.hex()
            items.append(item)
        write_atomic(
            self.path / "contacts.toml", tomli_w.dumps({"contact": items}).encode(), private=True
        )

    # -- control file -------------------------------------------------------------------

    def write_control(self, info: dict[str, Any]) -> None:
        write_atomic(self.path / "control.json", json.dumps(info).encode(), private=True)

    def read_control(self) -> dict[str, Any]:
        path = self.path / "control.json"
        try:
            info = json.loads(_read_limited(path, MAX_CONTROL_BYTES))
        except FileNotFoundError:
            raise DataDirError(f"no node is running with data directory {self.path}") from None
        except (OSError, ValueError) as exc:
            raise DataDirError(f"{path}: {exc}") from None
        if not isinstance(info, dict) or not isinstance(info.get("port"), int):
            raise DataDirError(f"{path}: not a control file")
        return info

    def remove_control(self) -> None:
        (self.path / "control.json").unlink(missing_ok=True)


def _contact(item: object) -> Contact:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ValueError("each [[contact]] needs a name")
    name = item["name"]
    if not valid_username(name):
        raise ValueError(f"contact name {name!r} is not a valid username")
    key = item.get("key")
    if key is None:
        return Contact(name)
    if not isinstance(key, str) or len(key) != 2 * KEY_BYTES:
        raise ValueError(f"contact {name}: key must be {2 * KEY_BYTES} hex digits")
    return Contact(name, bytes.fromhex(key))
