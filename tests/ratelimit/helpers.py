"""Test helpers: build limit tables from envoyproxy-format YAML and run one decision through a backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from outrider.process import free_port
from ratelimit_service.backends.base import Backend
from ratelimit_service.config import parse_descriptor_file
from ratelimit_service.decision import Decision, DescriptorInput, decide, plan
from ratelimit_service.limits import LimitTable, compile_table
from ratelimit_service.service import RateLimitService, add_to_server

T0 = 1_800_000_000_000  # a fixed "now" in ms, on a day boundary: windows start here
MINUTE = 60_000


def table_of(*texts: str) -> LimitTable:
    return compile_table(None, [parse_descriptor_file(t, "<test>") for t in texts])


def desc(*entries: tuple[str, str], hits: int = 1) -> DescriptorInput:
    return DescriptorInput(tuple(entries), hits)


async def run(backend: Backend, table: LimitTable, domain: str, descriptors: Sequence[DescriptorInput],
              now_ms: int) -> Decision:
    laid_out = plan(table, domain, descriptors, now_ms)
    outcomes = await backend.evaluate(domain, laid_out.checks, now_ms) if laid_out.checks else []
    return decide(laid_out, outcomes)


def limit_yaml(domain: str, algorithm: str, rpu: int, unit: str = "minute", burst: int | None = None,
               shadow: bool = False, key: str = "k") -> str:
    extra = f"\n      burst: {burst}" if burst is not None else ""
    return f"""
domain: {domain}
descriptors:
  - key: {key}
    shadow_mode: {str(shadow).lower()}
    rate_limit:
      unit: {unit}
      requests_per_unit: {rpu}
      algorithm: {algorithm}{extra}
"""


def rls_request(*descriptors: tuple[tuple[str, str], ...], domain: str, hits: int = 0) -> rls_pb2.RateLimitRequest:
    """A ShouldRateLimit request: each descriptor given as its (key, value) entries."""
    out = rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits)
    for entries in descriptors:
        d = out.descriptors.add()
        for key, value in entries:
            d.entries.add(key=key, value=value)
    return out


async def serving_stub(service: RateLimitService) -> AsyncIterator[rls_pb2_grpc.RateLimitServiceStub]:
    """`service` on a real grpc.aio server on a free loopback port, and a stub to it (async for; one item)."""
    server = grpc.aio.server()
    add_to_server(service, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield rls_pb2_grpc.RateLimitServiceStub(channel)
    finally:
        await server.stop(None)
