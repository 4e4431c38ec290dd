"""JSON logs: one object per line on stderr, and a cheap path for per-decision lines."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Renders a record and its `extra=` fields as one JSON object."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def setup_logging(service: str, level: str = "info") -> None:
    """Route every logger to one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class DecisionLog:
    """One JSON line per decision, written without the logging machinery (it is on the hot path)."""

    def __init__(self, service: str, enabled: bool = True, stream: Any = None) -> None:
        self._service = service
        self._enabled = enabled
        self._stream = stream if stream is not None else sys.stderr

    def write(self, fields: dict[str, Any]) -> None:
        if not self._enabled:
            return
        fields["ts"] = round(time.time(), 6)
        fields["service"] = self._service
        self._stream.write(json.dumps(fields, separators=(",", ":")) + "\n")
