"""Prometheus metrics of the ext_proc service (labelled children cached: .labels() costs more than .inc())."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

STREAMS = Counter("ext_proc_streams_total", "Processing streams opened by Envoy", ["route"])
EVENTS = Counter("ext_proc_events_total",
                 "What happened in streams: rejected (by rule), cache_hit/miss/store/invalidate, oversize...",
                 ["kind", "detail"])
CACHE_ERRORS = Counter("ext_proc_cache_errors_total", "Cache backend calls that failed (treated as a miss)")
ERRORS = Counter("ext_proc_internal_errors_total", "Messages that failed inside the service")
MESSAGE_SECONDS = Histogram(
    "ext_proc_message_duration_seconds", "Time to answer one message, inside the service (cache I/O included)",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
)


class LabelCache:
    """Children of a labelled counter, created once per label tuple."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[tuple[str, ...], Counter] = {}

    def inc(self, *labels: str) -> None:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._counter.labels(*labels)
        child.inc()
