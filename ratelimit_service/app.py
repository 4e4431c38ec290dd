"""Composition root of ratelimit_service: config → limit table, backend (memory or Redis) → gRPC server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc

from outrider.config import GatewayConfig
from outrider.config.ratelimit import RateLimitsConfig
from outrider.grpc_runtime import serve
from outrider.logs import DecisionLog
from outrider.metrics import start_metrics_server
from outrider.service_main import cancel_tasks, service_main
from ratelimit_service.backends.base import Backend
from ratelimit_service.backends.memory import MemoryBackend
from ratelimit_service.backends.redis_backend import RedisBackend, RedisClusterBackend
from ratelimit_service.config_warnings import config_warnings
from ratelimit_service.guard import GuardedBackend
from ratelimit_service.limits import LimitTable
from ratelimit_service.reload import ConfigWatcher, build_table
from ratelimit_service.service import RateLimitService, Settings, add_to_server

log = logging.getLogger("ratelimit_service")
SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"


def make_backend(rl: RateLimitsConfig) -> Backend:
    """Memory when no Redis is configured; else Redis or Redis Cluster."""
    if rl.redis is None:
        return MemoryBackend()
    if rl.redis.cluster:
        return RedisClusterBackend(rl.redis.url, key_prefix=rl.redis.key_prefix,
                                   max_connections=rl.redis.max_connections, timeout_s=rl.budget_ms / 1000)
    return RedisBackend(rl.redis.url, key_prefix=rl.redis.key_prefix, timeout_s=rl.budget_ms / 1000)


def settings_of(config: GatewayConfig, table: LimitTable) -> Settings:
    rl = config.rate_limits or RateLimitsConfig()
    return Settings(table, near_ratio=rl.near_limit_ratio, failure_mode_deny=rl.failure_mode == "deny")


async def run_service(config: GatewayConfig, config_path: Path) -> None:
    rl = config.rate_limits or RateLimitsConfig()
    table = build_table(config, str(config_path))
    backend = make_backend(rl)
    guard = GuardedBackend(backend, rl.budget_ms / 1000)
    decision_log = DecisionLog("ratelimit_service", enabled=config.logging.decisions)
    service = RateLimitService(settings_of(config, table), guard, decision_log=decision_log)

    def on_change(new: GatewayConfig, new_table: LimitTable) -> None:
        if (new.rate_limits or RateLimitsConfig()).redis != rl.redis:
            log.warning("rate_limits.redis changed: restart the service to use the new store")
        service.swap(settings_of(new, new_table))

    watcher = ConfigWatcher(config_path, config, on_change, rl.reload_interval_s)
    tasks = [asyncio.create_task(watcher.run()), asyncio.create_task(decision_log.run_flusher())]

    def register(server: grpc.aio.Server) -> None:
        add_to_server(service, server)

    settings = config.services.ratelimit
    start_metrics_server(settings.address, settings.metrics_port)
    log.info("rate limit store", extra={"backend": type(backend).__name__, "domain": rl.domain})
    for warning in config_warnings(config):
        log.warning(warning)
    try:
        await serve(register, settings.address, settings.port, [SERVICE_NAME])
    finally:
        await cancel_tasks(tasks)
        await backend.close()


def main(argv: list[str] | None = None) -> None:
    service_main("ratelimit_service", "outrider rate limit service", run_service, argv)
