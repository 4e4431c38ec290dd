"""Prometheus metrics of the rate limit service, with labelled children cached off the hot path."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

BACKEND_ERRORS = Counter("rate_limit_backend_errors_total", "Store calls that failed or ran over the budget",
                         ["kind"])
FAILURE_MODE = Counter("rate_limit_failure_mode_total", "Requests answered in the failure mode", ["mode"])
LOCAL_CACHE_HITS = Counter("rate_limit_local_cache_hits_total",
                           "Requests refused from the local over-limit cache, without a store round trip")
INTERNAL_ERRORS = Counter("rate_limit_internal_errors_total", "Requests that failed inside the service")
DECISION_SECONDS = Histogram(
    "rate_limit_decision_seconds", "Time to answer one ShouldRateLimit, inside the service",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
)


class DescriptorCounts(Collector):
    """rate_limit_{hits,rejections,near_limit,shadow}_total{domain,descriptor} as plain ints.

    The hot path adds to a list per (domain, descriptor); Prometheus reads them at scrape time. That
    spares four locked Counter increments per descriptor per request.
    """

    NAMES = (
        ("rate_limit_hits", "Hits (hits_addend summed) per matched descriptor"),
        ("rate_limit_rejections", "Descriptors answered OVER_LIMIT"),
        ("rate_limit_near_limit", "Admitted hits above near_limit_ratio of the limit"),
        ("rate_limit_shadow", "Over the limit in shadow mode (answered OK)"),
    )

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list[int]] = {}

    def row(self, domain: str, descriptor: str) -> list[int]:
        key = (domain, descriptor)
        found = self.rows.get(key)
        if found is None:
            found = self.rows[key] = [0, 0, 0, 0]
        return found

    def collect(self) -> Iterator[CounterMetricFamily]:
        rows = list(self.rows.items())  # the event loop may add rows while the scrape thread reads
        for index, (name, help_text) in enumerate(self.NAMES):
            family = CounterMetricFamily(name, help_text, labels=["domain", "descriptor"])
            for (domain, descriptor), values in rows:
                family.add_metric([domain, descriptor], values[index])
            yield family


DESCRIPTOR_COUNTS = DescriptorCounts()
REGISTRY.register(DESCRIPTOR_COUNTS)
