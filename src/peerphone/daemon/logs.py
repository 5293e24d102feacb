"""Structured logs: JSON lines in `DIR/node.log`, short lines on stderr."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

LOG_FILE_BYTES = 5 * 1024 * 1024  # per file; two old files are kept
LOG_BACKUPS = 2


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file readable by its owner only (0600), also when it existed before
    or is started anew at rotation: a node's log names its peers and calls."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def setup_logging(log_file: Path, verbose: bool) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    to_file = PrivateRotatingFileHandler(log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_BACKUPS)
    to_file.setFormatter(JsonFormatter())
    root.addHandler(to_file)
    to_err = logging.StreamHandler(sys.stderr)
    to_err.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(to_err)
    logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic's per-packet chatter


class ErrorDigest:
    """Logs what changed in a set of error counters, at most once per `interval_s`.

    Garbage from the network is counted where it is dropped; this turns the counts into
    one log line per interval instead of one per packet (an attacker cannot flood the log).
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: Counter[str] = Counter()
        self._next = 0.0

    def maybe_log(self, counters: Counter[str], now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now < self._next:
            return False
        new = Counter({k: v - self._last[k] for k, v in counters.items() if v > self._last[k]})
        if not new:
            return False
        self._next = now + self.interval_s
        self._last = Counter(counters)
        summary = ", ".join(f"{k}={v}" for k, v in sorted(new.items()))
        self.logger.warning("dropped input since last report: %s", summary, extra={"fields": new})
        return True
