"""Composition root of ext_proc: config versions (file or control plane) → plans and cache → gRPC service."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from ext_proc.cache_backends import CacheBackend, MemoryCache, RedisCache
from ext_proc.config import CacheConfig
from ext_proc.metrics import service_metrics
from ext_proc.plugin import PLUGIN
from ext_proc.purge import CacheView, PurgeServer
from ext_proc.resource import PlanMemo, build
from ext_proc.service import ExternalProcessorService, Live
from outrider.logs import DecisionLog
from outrider.service_main import ServiceSpec, StartupSettings, cancel_tasks, run_main
from outrider.token_api import TokenApiSlot

log = logging.getLogger("ext_proc")
SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"


def _backend_key(settings: CacheConfig | None) -> tuple[Any, ...] | None:
    """What makes two cache backends the same one (entries survive a version that keeps it)."""
    if settings is None:
        return None
    if settings.backend == "redis" and settings.redis_url:
        return ("redis", settings.redis_url, settings.key_prefix)
    return ("memory", settings.max_entries)


def cache_backend(settings: CacheConfig | None) -> CacheBackend | None:
    """Redis when the config says so (shared by replicas), else an in-process LRU; none without cache rules."""
    if settings is None:
        return None
    if settings.backend == "redis" and settings.redis_url:
        return RedisCache(settings.redis_url, settings.key_prefix)
    return MemoryCache(settings.max_entries, on_resize=service_metrics().cache_size.inc)


class ExtProcRuntime:
    """ext_proc's live state: each applied version is compiled whole, then swapped in with one assignment."""

    health_names = (SERVICE_NAME,)

    def __init__(self, _settings: StartupSettings) -> None:
        self.decision_log = DecisionLog("ext_proc")
        self.service = ExternalProcessorService(None, self.decision_log)
        self._cache_key: tuple[Any, ...] | None = None
        self._plans = PlanMemo()  # unchanged routes keep their plans across versions
        self._closing: set[asyncio.Task[None]] = set()
        self._flusher = asyncio.create_task(self.decision_log.run_flusher())
        self._purge = TokenApiSlot(lambda settings: PurgeServer(settings, self._cache_view, self.service.count_purge))

    def register(self, server: grpc.aio.Server) -> None:
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(self.service, server)

    async def apply(self, version: str, payload: Mapping[str, Any]) -> None:
        # In a thread: a large version must not stall the streams this loop serves (the GIL still hands the
        # loop a turn every few ms). Raises ConfigRejected: nothing below runs, the live version stays.
        built = await asyncio.to_thread(build, payload, self._plans)
        old = self.service.live
        key = _backend_key(built.cache)
        keep = old is not None and key == self._cache_key
        cache = old.cache if keep and old is not None else cache_backend(built.cache)
        self.service.use(Live(built.plans, cache, built.failure_mode_allow, version,
                              cache_prefix=built.cache.key_prefix if built.cache is not None else ""))
        self._cache_key = key
        self.decision_log.enabled = built.decisions
        if old is not None and old.cache is not None and not keep:
            old.retire(functools.partial(self._close_later, old.cache))
        await self._purge.apply(built.purge)
        log.info("config version live", extra={"version": version,
                                                "routes": sorted(p for p in built.plans if p)})

    def _cache_view(self) -> CacheView:
        live = self.service.live
        return CacheView(None, "") if live is None else CacheView(live.cache, live.cache_prefix)

    def _close_later(self, cache: CacheBackend) -> None:
        task = asyncio.create_task(cache.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        await cancel_tasks([self._flusher])
        await self._purge.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        live = self.service.live
        if live is not None and live.cache is not None:
            await live.cache.close()


SPEC = ServiceSpec(PLUGIN, "outrider ext_proc service", ExtProcRuntime)


def main(argv: list[str] | None = None) -> None:
    run_main(SPEC, argv)
