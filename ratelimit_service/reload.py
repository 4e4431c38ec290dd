"""Hot reload: poll the gateway config and the descriptor files; swap in a valid change, keep the old else."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from outrider.config import ConfigError, GatewayConfig, load_config
from outrider.config.errors import ConfigIssue, format_loc
from outrider.config.ratelimit import load_descriptor_file
from ratelimit_service.limits import LimitTable, compile_table
from ratelimit_service.metrics import CONFIG_RELOADS

log = logging.getLogger("ratelimit_service.reload")


def build_table(config: GatewayConfig, filename: str = "<config>") -> LimitTable:
    """The gateway's plans plus its envoyproxy-format files. Raises ConfigError."""
    rl = config.rate_limits
    files = [load_descriptor_file(path) for path in (rl.files if rl is not None else [])]
    try:
        return compile_table(rl, files)
    except ValueError as exc:
        raise ConfigError(filename, [ConfigIssue(("rate_limits", "files"), str(exc))]) from None


class ConfigWatcher:
    """Polls mtime and size cheaply, hashes contents only when they moved, reloads only on a real change."""

    def __init__(self, config_path: Path, config: GatewayConfig,
                 on_change: Callable[[GatewayConfig, LimitTable], None], interval_s: float = 1.0) -> None:
        self._path = config_path
        self._on_change = on_change
        self._interval = interval_s
        self._files = self._watched(config)
        self._stats = self._stat()
        self._digest = self._hash()

    @staticmethod
    def _watched_of(config: GatewayConfig) -> list[Path]:
        return list(config.rate_limits.files) if config.rate_limits is not None else []

    def _watched(self, config: GatewayConfig) -> list[Path]:
        return [self._path, *self._watched_of(config)]

    def _stat(self) -> list[tuple[int, int] | None]:
        out: list[tuple[int, int] | None] = []
        for path in self._files:
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return out

    def _hash(self) -> str:
        digest = hashlib.sha256()
        for path in self._files:
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"\0missing\0")
            digest.update(b"\0")
        return digest.hexdigest()

    def poll(self) -> bool:
        """Reload if a watched file changed; True when a new config went live."""
        stats = self._stat()
        if stats == self._stats:
            return False
        self._stats = stats
        digest = self._hash()
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            config = load_config(self._path)
            table = build_table(config, str(self._path))
        except ConfigError as exc:
            CONFIG_RELOADS.labels(result="rejected").inc()
            log.error("config change rejected; the previous config stays live", extra={
                "file": exc.filename,
                "issues": [{"field": format_loc(i.loc), "line": i.line, "reason": i.message}
                           for i in exc.issues],
            })
            return False
        # The file list may have changed with the config: watch the new set from now on.
        self._files = self._watched(config)
        self._stats = self._stat()
        self._digest = self._hash()
        self._on_change(config, table)
        CONFIG_RELOADS.labels(result="applied").inc()
        log.info("config reloaded", extra={"files": [str(p) for p in self._files]})
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.poll()
            except Exception:
                log.exception("config poll failed")
