"""Talking to a running node's control API, found through its data directory."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from peerphone.daemon.datadir import DataDir
from peerphone.errors import PeerphoneError

DEFAULT_TIMEOUT_S = 15.0
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class ControlError(PeerphoneError):
    """The node is not running, refused the request, or answered something unexpected."""


class ControlClient:
    """Blocking HTTP calls to one node's control API (for the CLI and the demo)."""

    def __init__(self, data_dir: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        info = DataDir(data_dir).read_control()
        self.base = f"http://{info.get('host', '127.0.0.1')}:{info['port']}"
        self.token = str(info.get("token", ""))
        self.timeout_s = timeout_s
        self.info = info

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read(MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as exc:
            raise ControlError(_error_text(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ControlError(f"the node at {self.base} does not answer: {exc}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ControlError("the node answered something that is not JSON") from None

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/status")
        return result

    def lookup(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "GET", f"/v1/lookup/{urllib.parse.quote(name, safe='')}"
        )
        return result


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read(MAX_RESPONSE_BYTES))
        return str(body["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {exc.code} {exc.reason}"
