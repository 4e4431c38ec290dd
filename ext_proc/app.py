"""Composition root of ext_proc: config → route plans, cache backend → gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from ext_proc.cache_backends import CacheBackend, MemoryCache, RedisCache
from ext_proc.config import CacheConfig, cache_of, settings_of
from ext_proc.plan import compile_plans
from ext_proc.service import ExternalProcessorService
from outrider.config import GatewayConfig
from outrider.grpc_runtime import serve
from outrider.logs import DecisionLog
from outrider.metrics import start_metrics_server
from outrider.service_main import service_main

log = logging.getLogger("ext_proc")
SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"


def cache_backend(config: GatewayConfig, needed: bool) -> CacheBackend | None:
    """Redis when the config says so (shared by replicas), else an in-process LRU; none without cache rules."""
    if not needed:
        return None
    settings = cache_of(config) or CacheConfig()
    if settings.backend == "redis" and settings.redis_url:
        return RedisCache(settings.redis_url)
    return MemoryCache(settings.max_entries)


async def run_service(config: GatewayConfig) -> None:
    plans = compile_plans(config)
    cache = cache_backend(config, any(plan.cache is not None for plan in plans.values()))
    settings = settings_of(config)
    decision_log = DecisionLog("ext_proc", enabled=config.logging.decisions)
    service = ExternalProcessorService(plans, cache, decision_log, failure_mode_allow=settings.failure_mode_allow)

    def register(server: grpc.aio.Server) -> None:
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(service, server)

    start_metrics_server(settings.address, settings.metrics_port)
    flusher = asyncio.create_task(decision_log.run_flusher())
    log.info("routes planned", extra={"routes": sorted(p for p in plans if p)})
    try:
        await serve(register, settings.address, settings.port, [SERVICE_NAME])
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        if cache is not None:
            await cache.close()


def main(argv: list[str] | None = None) -> None:
    service_main("ext_proc", "outrider ext_proc service", lambda config, _path: run_service(config), argv)
