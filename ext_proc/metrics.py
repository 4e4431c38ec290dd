"""Prometheus metrics of the ext_proc service, created in a registry once the service starts (never at import)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from outrider.metrics import per_registry


@dataclass(frozen=True)
class ExtProcMetrics:
    streams: Counter
    events: Counter
    cache_errors: Counter
    errors: Counter
    message_seconds: Histogram
    # The design's names (README "Observability"), counted where ext_proc_events_total{kind=cache_*} is.
    cache_hits: Counter
    cache_misses: Counter
    cache_size: Gauge


def _build(registry: CollectorRegistry) -> ExtProcMetrics:
    return ExtProcMetrics(
        streams=Counter("ext_proc_streams_total", "Processing streams opened by Envoy", ["route"],
                        registry=registry),
        events=Counter("ext_proc_events_total",
                       "What happened in streams: rejected (by rule), cache_hit/miss/store/invalidate, oversize...",
                       ["kind", "detail"], registry=registry),
        cache_errors=Counter("ext_proc_cache_errors_total", "Cache backend calls that failed (treated as a miss)",
                             registry=registry),
        errors=Counter("ext_proc_internal_errors_total", "Messages that failed inside the service",
                       registry=registry),
        message_seconds=Histogram(
            "ext_proc_message_duration_seconds",
            "Time to answer one message, inside the service (cache I/O included)",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
            registry=registry),
        cache_hits=Counter("cache_hits", "Responses answered from the cache "
                           "(= ext_proc_events_total{kind=\"cache_hit\"})", registry=registry),
        cache_misses=Counter("cache_misses", "Cacheable requests not found in the cache "
                             "(= ext_proc_events_total{kind=\"cache_miss\"})", registry=registry),
        # Workers each hold their own in-memory cache: their sizes add up.
        cache_size=Gauge("cache_size_bytes", "Bytes (keys and responses) held by the in-memory response cache; "
                         "0 with the redis backend (see Redis's own used_memory)", multiprocess_mode="livesum",
                         registry=registry),
    )


class LabelCache:
    """Children of a labelled counter, created once per label tuple (.labels() costs more than .inc())."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[tuple[str, ...], Counter] = {}

    def inc(self, *labels: str) -> None:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._counter.labels(*labels)
        child.inc()


class EventCounter(LabelCache):
    """ext_proc_events_total{kind,detail}, and the design's cache_hits_total / cache_misses_total beside it."""

    def __init__(self, metrics: ExtProcMetrics) -> None:
        super().__init__(metrics.events)
        self._aliases = {"cache_hit": metrics.cache_hits, "cache_miss": metrics.cache_misses}

    def inc(self, *labels: str) -> None:
        super().inc(*labels)
        alias = self._aliases.get(labels[0])
        if alias is not None:
            alias.inc()


# The metrics in a registry (default: the process's), made by the first call: the service's start.
service_metrics = per_registry(_build)
