"""Hot reload: poll the gateway config and the descriptor files; swap in a valid change, keep the old else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from outrider.config import ConfigError, GatewayConfig, load_config
from outrider.config.errors import ConfigIssue, format_loc
from outrider.config.ratelimit import load_descriptor_file
from outrider.config.watch import FileChangeDetector
from ratelimit_service.limits import LimitTable, compile_table
from ratelimit_service.metrics import service_metrics

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
    """Reloads when the gateway file or one of its descriptor files really changed (kernel change detector)."""

    def __init__(self, config_path: Path, config: GatewayConfig,
                 on_change: Callable[[GatewayConfig, LimitTable], None], interval_s: float = 1.0) -> None:
        self._path = config_path
        self._on_change = on_change
        self._interval = interval_s
        self._files = self._watched(config)
        self._detector = FileChangeDetector(self._files)

    @staticmethod
    def _watched_of(config: GatewayConfig) -> list[Path]:
        return list(config.rate_limits.files) if config.rate_limits is not None else []

    def _watched(self, config: GatewayConfig) -> list[Path]:
        return [self._path, *self._watched_of(config)]

    def poll(self) -> bool:
        """Reload if a watched file changed; True when a new config went live."""
        if not self._detector.changed():
            return False
        try:
            config = load_config(self._path)
            table = build_table(config, str(self._path))
        except ConfigError as exc:
            service_metrics().config_reloads.labels(result="rejected").inc()
            log.error("config change rejected; the previous config stays live", extra={
                "file": exc.filename,
                "issues": [{"field": format_loc(i.loc), "line": i.line, "reason": i.message}
                           for i in exc.issues],
            })
            return False
        # The file list may have changed with the config: watch the new set from now on.
        self._files = self._watched(config)
        self._detector.watch(self._files)
        self._on_change(config, table)
        service_metrics().config_reloads.labels(result="applied").inc()
        log.info("config reloaded", extra={"files": [str(p) for p in self._files]})
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.poll()
            except Exception:
                log.exception("config poll failed")
