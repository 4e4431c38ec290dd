"""gRPC server bootstrap shared by the services: health (gated on readiness), GC freeze, graceful drain."""

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

# gc.set_threshold(gen0, gen1, gen2) for the serving process (Python's default is 700, 10, 10).
GC_THRESHOLD = (50_000, 20, 20)


async def serve(
    register: Callable[[grpc.aio.Server], None],
    address: str,
    port: int,
    service_names: Sequence[str],
    drain_grace_s: float = 5.0,
    ready: asyncio.Event | None = None,
    credentials: grpc.ServerCredentials | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a grpc.aio server until SIGTERM/SIGINT, then report NOT_SERVING and drain in-flight calls.

    The port binds at once; with `ready`, health (the "" service and each named one) says NOT_SERVING
    until it is set — a service without its first config version must not take traffic. With
    `credentials` the port speaks TLS (the control plane's ADS port with mTLS). With `stop`, the caller
    owns the signals (several servers in one process, outrider/combined.py) and sets it to drain.
    """
    options = [*SERVER_OPTIONS, ("grpc.so_reuseport", 1 if reuse_port_enabled() else 0)]
    server = grpc.aio.server(options=options)
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = ("", *service_names)

    async def report(status: int) -> None:
        for name in names:
            await health_servicer.set(name, status)

    gated = ready is not None and not ready.is_set()
    # Set before the port opens: the health servicer answers SERVING for "" by default.
    await report(health_pb2.HealthCheckResponse.NOT_SERVING if gated else health_pb2.HealthCheckResponse.SERVING)
    target = f"{address}:{port}"
    bound = server.add_insecure_port(target) if credentials is None else server.add_secure_port(target, credentials)
    if bound == 0:
        raise OSError(f"cannot bind gRPC server to {address}:{port}")
    await server.start()
    notify_bound()  # a worker of several: the parent reports the service ready once every worker is bound
    # Everything built at start lives until exit: keep it out of the cyclic GC's full scans.
    gc.collect()
    gc.freeze()
    # What requests leave alive (the rate limiter's plan cache, token caches) is scanned by every young
    # collection: at the default threshold (700) a new rate limit plan cost 40-54 µs of CPU, at this one
    # 21-27 µs, with no GC 17 µs (bench/rls_profile.py, two runs). Cyclic garbage waits a little longer.
    gc.set_threshold(*GC_THRESHOLD)

    async def serving_when_ready() -> None:
        if gated:
            assert ready is not None
            log.info("bound; NOT_SERVING until the first config is applied",
                     extra={"address": address, "port": port})
            await ready.wait()
            await report(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"address": address, "port": port})

    gate = asyncio.create_task(serving_when_ready())
    loop = asyncio.get_running_loop()
    # One handler per signal and loop: a process running several servers sets one shared `stop` itself.
    signals = (signal.SIGTERM, signal.SIGINT) if stop is None else ()
    stop = stop or asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    except asyncio.CancelledError:
        # Cancelled by the caller (a test, a supervisor task): no grace, but never leave the port bound.
        gate.cancel()
        await server.stop(None)
        raise
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    gate.cancel()
    log.info("draining", extra={"grace_s": drain_grace_s})
    # After this, health stays NOT_SERVING whatever sets it (the gate is cancelled anyway).
    await health_servicer.enter_graceful_shutdown()
    # stop() refuses new RPCs at once and lets in-flight ones finish within the grace period.
    await server.stop(drain_grace_s)
    log.info("stopped")

