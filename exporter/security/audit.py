"""The audit log: one JSON object per line for each admin action and each refused authentication.

Each line has ``ts`` (RFC 3339, UTC), ``event`` (``auth_failure``, ``forbidden``, ``reference_replaced``,
``model_reset``), ``client`` (the peer address), ``token`` (the token's *name* from the config, never its
value; null when none was recognised), ``method``, ``path``, ``status`` and the event's own fields (``model``,
``models``, ``action``, ``reason``, ``rows``). It never holds a token value, a request body or a feature
value. The file rotates at 10 MiB, keeping 5 old files; ``-`` writes to stderr instead.
"""

from __future__ import annotations

import datetime as _dt
import logging
import logging.handlers
import os
import sys
import threading

import orjson

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5


class AuditLog:
    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()
        if path == "-":
            self.handler: logging.Handler = logging.StreamHandler(sys.stderr)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8", delay=True
            )
        self.handler.setFormatter(logging.Formatter("%(message)s"))

    def write(self, event: str, **fields) -> None:
        ts = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = orjson.dumps({"ts": ts, "event": event, **fields}).decode()
        with self.lock:
            self.handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    def close(self) -> None:
        with self.lock:
            self.handler.close()
