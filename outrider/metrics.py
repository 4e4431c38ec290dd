"""Prometheus /metrics endpoint for one service process, and the kernel's own metrics (created at start)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from functools import cache
from typing import Protocol, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, start_http_server

from outrider.workers import metrics_served_by_parent, when_bound


def start_metrics_server(address: str, port: int) -> None:
    """Serve the default registry at http://address:port/metrics from a background thread.

    It opens once the service's gRPC port is bound (grpc_runtime.serve says when): `outrider run` takes
    an answering /metrics as the service being ready. In a worker of a multi-worker service the
    supervising parent serves the aggregate instead, once every worker is bound.
    """
    if metrics_served_by_parent():
        return
    when_bound(lambda: start_http_server(port, addr=address))


@cache
def config_reloads() -> Counter:
    """outrider_config_reloads_total{service,result}: config versions applied or rejected, either mode.

    Registered on first call (a service's start), never at import; cached, since a name registers once.
    """
    return Counter("outrider_config_reloads_total",
                   "Config versions a service applied or rejected (from its file or from the control plane)",
                   ["service", "result"])


T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class ServiceMetrics(Protocol[T_co]):
    def __call__(self, registry: CollectorRegistry | None = None) -> T_co: ...


def per_registry(build: Callable[[CollectorRegistry], T]) -> ServiceMetrics[T]:
    """A service's `service_metrics(registry=None)`: its metrics built in `registry` (default: the process's)
    by the first call — the service's start, never an import — and the same objects for every later caller."""
    once = functools.cache(build)

    def service_metrics(registry: CollectorRegistry | None = None) -> T:
        return once(REGISTRY if registry is None else registry)

    return service_metrics
