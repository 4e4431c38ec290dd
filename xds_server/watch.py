"""Watch the gateway config file: an edit goes through the same pipeline as an API change."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from outrider.config import ConfigError, GatewayConfig, load_config
from xds_server.metrics import CHANGES

log = logging.getLogger("xds_server.watch")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ConfigFileWatcher:
    """Polls mtime and size (cheap), then the content digest (exact) of the config file."""

    def __init__(
        self,
        path: Path,
        digest: str,
        interval_s: float,
        apply: Callable[[GatewayConfig, str], Awaitable[object]],
    ) -> None:
        self._path = path
        self._digest = digest
        self._interval_s = interval_s
        self._apply = apply
        self._stat: tuple[float, int] | None = self._stat_now()

    def _stat_now(self) -> tuple[float, int] | None:
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    async def check_once(self) -> None:
        stat = self._stat_now()
        if stat is None or stat == self._stat:
            return
        self._stat = stat
        try:
            digest = file_digest(self._path)
        except OSError:
            return
        if digest == self._digest:
            return
        self._digest = digest
        try:
            config = load_config(self._path)
        except ConfigError as exc:
            CHANGES.labels(source="file", outcome="invalid").inc()
            log.error(
                "config file rejected; the running config stays",
                extra={"problems": [issue.render(exc.filename) for issue in exc.issues]},
            )
            return
        await self._apply(config, digest)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_once()
            except Exception:  # a watcher that dies silently would be worse than a logged failure
                log.exception("config file check failed")
