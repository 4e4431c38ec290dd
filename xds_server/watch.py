"""Watch the gateway config file: an edit goes through the same pipeline as an API change."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from outrider.config import ConfigError, GatewayConfig, load_config_given
from outrider.config.watch import FileChangeDetector
from xds_server.metrics import service_metrics

log = logging.getLogger("xds_server.watch")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ConfigFileWatcher:
    """Polls the config file through the kernel's change detector; `digest` is the one already applied."""

    def __init__(
        self,
        path: Path,
        digest: str,
        interval_s: float,
        apply: Callable[[dict[str, Any], GatewayConfig, str], Awaitable[object]],
    ) -> None:
        self._path = path
        self._digest = digest
        self._interval_s = interval_s
        self._apply = apply
        self._files = FileChangeDetector([path])

    async def check_once(self) -> None:
        if not self._files.changed():
            return
        try:
            digest = file_digest(self._path)
        except OSError:  # gone for a moment (an editor replacing it): wait for it to come back
            return
        if digest == self._digest:
            return
        self._digest = digest
        try:
            given, config = load_config_given(self._path)
        except ConfigError as exc:
            service_metrics().changes.labels(source="file", outcome="invalid").inc()
            log.error(
                "config file rejected; the running config stays",
                extra={"problems": [issue.render(exc.filename) for issue in exc.issues]},
            )
            return
        await self._apply(given, config, digest)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_once()
            except Exception:  # a watcher that dies silently would be worse than a logged failure
                log.exception("config file check failed")
