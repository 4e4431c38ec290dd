"""gRPC server bootstrap shared by the services: health service, GC freeze, graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from outrider.workers import notify_bound, reuse_port_enabled

log = logging.getLogger("outrider.grpc")

# Envoy keeps long-lived HTTP/2 connections to us; keepalive pings find dead peers.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
]


async def serve(
    register: Callable[[grpc.aio.Server], None],
    address: str,
    port: int,
    service_names: Sequence[str],
    drain_grace_s: float = 5.0,
) -> None:
    """Run a grpc.aio server until SIGTERM/SIGINT, then report NOT_SERVING and drain in-flight calls."""
    options = [*SERVER_OPTIONS, ("grpc.so_reuseport", 1 if reuse_port_enabled() else 0)]
    server = grpc.aio.server(options=options)
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{address}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC server to {address}:{port}")
    await server.start()
    notify_bound()  # a worker of several: the parent reports the service ready once every worker is bound
    # Everything built at start lives until exit: keep it out of the cyclic GC's full scans.
    gc.collect()
    gc.freeze()
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving", extra={"address": address, "port": port})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining", extra={"grace_s": drain_grace_s})
    await health_servicer.enter_graceful_shutdown()
    # stop() refuses new RPCs at once and lets in-flight ones finish within the grace period.
    await server.stop(drain_grace_s)
    log.info("stopped")

