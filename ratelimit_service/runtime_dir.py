"""`--reference-env` mode: versions from the reference's runtime directory, re-read whenever a file in it changes."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from outrider.config.watch import FileChangeDetector
from outrider.metrics import config_reloads
from outrider.service_main import WATCH_INTERVAL_S, StartupSettings, poll_forever
from outrider.service_resource import canonical_json
from outrider.xds_client import ApplyFn, reason_of
from ratelimit_service import file_set, reference_env
from ratelimit_service.config import SERVICE, RateLimitsConfig
from ratelimit_service.resource import inline_files

log = logging.getLogger("ratelimit_service")


class RuntimeDirSource:
    """The payload from `rate_limits` (the environment's) and every file under one directory.

    A set that fails to load keeps the running version and is logged with each file and reason, as
    the gateway-config mode does (outrider.service_main.FileSource).
    """

    def __init__(self, directory: Path, section: Mapping[str, Any], interval_s: float = WATCH_INTERVAL_S) -> None:
        self._directory = directory
        self._section = dict(section)
        self._interval_s = interval_s
        self._files = FileChangeDetector(file_set.watched([directory]))
        self._apply: ApplyFn | None = None
        self._live: str | None = None
        self.ready = asyncio.Event()
        self.version: str | None = None

    def payload(self) -> dict[str, Any]:
        loaded = file_set.load([self._directory], bool(self._section.get("merge_domains")))
        return {"rate_limits": self._section, "files": inline_files(loaded)}

    async def start(self, apply: ApplyFn) -> None:
        self._apply = apply
        try:
            payload = self.payload()
            await apply(self._version(), payload)
        except Exception as exc:
            raise SystemExit(f"{self._directory}: {reason_of(exc)}") from exc
        self._live, self.version = canonical_json(payload), self._version()
        self.ready.set()

    def _version(self) -> str:
        return f"dir-{self._files.digest[:16]}"

    async def poll(self) -> bool:
        """Reload when a file of the directory really changed; True when a new version went live."""
        assert self._apply is not None, "start() first"
        if not self._files.changed():
            return False
        # Files added or removed change what to watch (the digest just seen stays the baseline).
        self._files.watch(file_set.watched([self._directory]))
        try:
            # Off the event loop: a file just written is waited for (file_set.read_stable), decisions are not.
            payload = await asyncio.to_thread(self.payload)
            text = canonical_json(payload)
            if text == self._live:
                return False
            await self._apply(self._version(), payload)
        except Exception as exc:  # a bad edit is reported; it never takes the service down
            config_reloads().labels(SERVICE, "rejected").inc()
            problems = exc.problems if isinstance(exc, file_set.SetError) else [reason_of(exc)]
            log.error("config change rejected; the last good config stays live",
                      extra={"file": str(self._directory), "issues": problems, "kept": self.version})
            return False
        self._live, self.version = text, self._version()
        log.info("config reloaded", extra={"file": str(self._directory), "version": self.version})
        return True

    async def run(self) -> None:
        await poll_forever(self.poll, self._interval_s)


def startup(env: Mapping[str, str] | None = None) -> tuple[StartupSettings, RuntimeDirSource]:
    """The start-up settings and config source of `--reference-env`; SystemExit naming every refused variable."""
    try:
        found = reference_env.read(os.environ if env is None else env)
        section = reference_env.fit(found, set(RateLimitsConfig.model_fields))
    except reference_env.ReferenceEnvError as exc:
        raise SystemExit(str(exc)) from None
    if found.metrics_port and found.metrics_address != found.address:
        raise SystemExit("refused envoyproxy/ratelimit settings: PROMETHEUS_ADDR: its host must be empty or "
                         f"GRPC_HOST ({found.address}): one listen address serves gRPC and /metrics")
    settings = StartupSettings(SERVICE, found.address, found.port, found.metrics_port, found.log_level)
    return settings, RuntimeDirSource(found.config_dir, section)
