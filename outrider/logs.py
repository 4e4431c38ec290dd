"""JSON logs: one object per line on stderr, and a cheap path for per-decision lines."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

# One encoder built once: json.dumps with any keyword argument builds a new JSONEncoder per call (about
# half its cost for a small dict); .encode() of a prebuilt one runs the C encoder straight away. ASCII
# output (ensure_ascii) escapes every control character, quote and non-ASCII character a client could send.
# bench/handwritten_bench.py measured it at least as fast as the hand-written member loop it replaced.
_ENCODE = json.JSONEncoder(separators=(",", ":"), default=str).encode
# The X-Request-ID of the request being handled (the access log's `request_id`). A service sets it where it
# learns the id; every log line written meanwhile in that task (and tasks it starts) carries it.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
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
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _ENCODE(entry)


def setup_logging(service: str, level: str = "info") -> None:
    """Route every logger to one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def encode_fields(fields: dict[str, Any]) -> str:
    """JSON members (without braces) for a dict: exactly json.dumps(fields, default=str, separators=(",", ":"))
    without its outer braces (tests/kernel/test_handwritten_differential.py)."""
    return _ENCODE(fields)[1:-1]


class DecisionLog:
    """One JSON line per decision, without the logging machinery (it is on the hot path).

    Lines are buffered and written in batches (at most every `flush_interval_s`, or when the buffer
    fills) so that a decision costs no write system call of its own. A line is formatted lazily, at
    flush, outside the request it describes: `write` only stamps the time and keeps the dict, so the
    caller must hand over a dict it does not change afterwards (every caller builds a fresh literal).
    """

    def __init__(self, service: str, enabled: bool = True, stream: Any = None,
                 flush_interval_s: float = 0.2, max_buffered: int = 512) -> None:
        self._service = service
        self._enabled = enabled
        self._stream = stream if stream is not None else sys.stderr
        self._service_json = json.dumps(service)
        self._flush_soon = False
        self._buffer: list[tuple[float, dict[str, Any]]] = []
        self._flush_interval_s = flush_interval_s
        self._max_buffered = max_buffered

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        # A new config version may turn decision lines on or off without a new log.
        self._enabled = value

    def write(self, fields: dict[str, Any]) -> None:
        if not self._enabled:
            return
        self._buffer.append((time.time(), fields))
        if len(self._buffer) < self._max_buffered:
            return
        if self._flush_soon:
            if len(self._buffer) >= 2 * self._max_buffered:
                self.flush()  # the loop turn that should have flushed has not come: bound the memory anyway
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script, a test): flush at once
            self.flush()
            return
        # Formatting a full buffer takes ~1 ms: do it in a loop turn of its own, not in this request.
        self._flush_soon = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_soon = False
        if self._buffer:
            entries, self._buffer = self._buffer, []
            service = self._service_json
            lines = []
            for ts, fields in entries:
                body = _ENCODE(fields)  # "{...}": its members follow ts and service; "{}" adds none
                lines.append(f'{{"ts":{ts:.6f},"service":{service}' + ("," + body[1:] if len(body) > 2 else "}"))
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()

    async def run_flusher(self) -> None:
        """Flush periodically until cancelled; flushes once more on the way out."""
        try:
            while True:
                await asyncio.sleep(self._flush_interval_s)
                self.flush()
        finally:
            self.flush()
