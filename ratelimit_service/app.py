"""Composition root of ratelimit_service: config versions (file or control plane) → limit table, store → gRPC."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from outrider.config import GatewayConfig
from outrider.logs import DecisionLog, setup_logging
from outrider.service_main import ServiceSpec, StartupSettings, cancel_tasks, run_main, run_service
from outrider.token_api import TokenApiSlot
from outrider.workers import metrics_served_by_parent
from outrider.xds_client import ConfigRejected
from ratelimit_service import file_set
from ratelimit_service.admin import AdminServer, BanView
from ratelimit_service.backends.base import Backend
from ratelimit_service.backends.memory import MemoryBackend
from ratelimit_service.backends.redis_backend import RedisBackend, RedisClusterBackend
from ratelimit_service.config import RateLimitsConfig, rate_limits_of
from ratelimit_service.guard import GuardedBackend
from ratelimit_service.plugin import PLUGIN
from ratelimit_service.resource import PayloadError, build
from ratelimit_service.service import NOT_READY, RateLimitService, add_to_server

log = logging.getLogger("ratelimit_service")
SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"


def make_backend(rl: RateLimitsConfig) -> Backend:
    """Memory when no Redis is configured; else Redis or Redis Cluster."""
    if rl.redis is None:
        return MemoryBackend(rl.memory.max_keys)
    if rl.redis.cluster:
        return RedisClusterBackend(rl.redis.url, key_prefix=rl.redis.key_prefix,
                                   max_connections=rl.redis.max_connections, timeout_s=rl.budget_ms / 1000)
    return RedisBackend(rl.redis.url, key_prefix=rl.redis.key_prefix, timeout_s=rl.budget_ms / 1000)


class RateLimitRuntime:
    """The live limits: each version's table and settings are built aside, then swapped in with one store.

    The store (memory or Redis, and its time budget) is a start-up choice made with the first version:
    counters must survive a reload, so a later version that changes it is applied without it, with a
    warning that a restart is needed.
    """

    health_names = (SERVICE_NAME,)

    def __init__(self, _settings: StartupSettings | None = None) -> None:
        self.decision_log = DecisionLog("ratelimit_service")
        # Until the first version there is no store: the service answers UNAVAILABLE and never calls it.
        self.service = RateLimitService(NOT_READY, GuardedBackend(MemoryBackend(), 1.0),
                                        decision_log=self.decision_log)
        self.backend: Backend | None = None
        self.store: RateLimitsConfig | None = None  # the section whose store is running
        self.version: str | None = None
        self._admin = TokenApiSlot(lambda settings: AdminServer(settings, self._ban_view))
        self._flusher = asyncio.create_task(self.decision_log.run_flusher())

    def register(self, server: grpc.aio.Server) -> None:
        add_to_server(self.service, server)

    async def apply(self, version: str, payload: Mapping[str, Any]) -> None:
        try:
            built = build(payload)
        except PayloadError as exc:
            raise ConfigRejected(str(exc)) from None
        rl = built.rate_limits
        if self.backend is None or self.store is None:
            self.backend = make_backend(rl)
            self.store = rl
            self.service.swap(built.settings, GuardedBackend(self.backend, rl.budget_ms / 1000))
            log.info("rate limit store", extra={"backend": type(self.backend).__name__, "domain": rl.domain})
            if isinstance(self.backend, MemoryBackend) and metrics_served_by_parent():
                # One of several workers (the parent serves their metrics): each counts on its own.
                log.warning("the in-memory rate limit store with several workers: each worker keeps its own "
                            "counters, so a limit may admit up to `workers` times its rate; configure "
                            "rate_limits.redis to share one count, or run one worker")
        else:
            if rl.redis != self.store.redis:
                log.warning("rate_limits.redis changed: restart the service to use the new store")
            if rl.budget_ms != self.store.budget_ms:
                log.warning("rate_limits.budget_ms changed: restart the service to use the new budget")
            if isinstance(self.backend, MemoryBackend):
                self.backend.max_keys = rl.memory.max_keys  # the cap may change live; counters stay
            self.service.swap(built.settings)
        self.decision_log.enabled = built.decisions_logged
        await self._admin.apply(built.admin)
        self.version = version
        log.info("config version live", extra={"version": version, "domains": sorted(built.settings.table.domains)})

    def _ban_view(self) -> BanView:
        domain = self.store.domain if self.store is not None else ""
        return BanView(self.backend, domain, self.service.bans_listed, self.service.ban_lifted)

    async def close(self) -> None:
        await cancel_tasks([self._flusher])
        await self._admin.close()
        if self.backend is not None:
            await self.backend.close()


def descriptor_files(config: GatewayConfig) -> Sequence[Path]:
    """The envoyproxy-format files the payload carries, and the directories among them (a file added or
    removed there): standalone mode watches them beside the config."""
    rl = rate_limits_of(config)
    return file_set.watched(rl.files) if rl is not None else []


SPEC = ServiceSpec(PLUGIN, "outrider rate limit service (also: --reference-env alone, to run from "
                   "envoyproxy/ratelimit's environment variables; check-config DIR, to check its files)",
                   RateLimitRuntime, watch_paths=descriptor_files)


def main(argv: list[str] | None = None) -> None:
    """`--config FILE`, `--xds ...`, or `--reference-env`: envoyproxy/ratelimit's environment variables
    (RUNTIME_ROOT, REDIS_URL, GRPC_PORT, ...; ratelimit_service/reference_env.py) and its runtime directory."""
    args = sys.argv[1:] if argv is None else argv
    if "--reference-env" not in args:
        run_main(SPEC, argv)
        return
    if args != ["--reference-env"]:
        raise SystemExit("--reference-env takes every setting from the environment: give no other option")
    from ratelimit_service.runtime_dir import startup

    settings, source = startup()
    setup_logging(SPEC.name, settings.log_level)
    import uvloop

    uvloop.run(run_service(SPEC, settings, source))
