"""The design's gateway metrics (http_requests_total, circuit_breaker_state, ...) derived from Envoy's stats.

A prometheus_client Collector: every scrape reads Envoy's admin `/stats/prometheus` (filtered to the few
stats it maps) and renames them, so each figure IS Envoy's count — there is no second counter that could
disagree. The mapping, and what Envoy cannot give (a method per route), is the table in README
"Observability"; `design_metrics` is its code.
"""

from __future__ import annotations

import re
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# The services' own clusters (outrider_ext_authz, outrider_xds, ...) carry gRPC calls, not gateway traffic.
SERVICE_CLUSTER_PREFIX = "outrider_"
# Envoy's admin listener has its own connection manager ("admin"): scrapes are not gateway requests.
ADMIN_PREFIX = "admin"
CLOSED, OPEN, HALF_OPEN = 0, 1, 2

# Only what the mapping reads (RE2 on Envoy's stat names): the full dump is ~200 KB, this is a few KB.
STATS_FILTER = (
    r"^(cluster\.[^.]+\.(upstream_rq_([0-9]{3}|5xx|time|timeout|pending_overflow|retry_overflow)"
    r"|upstream_cx_overflow|circuit_breakers\.default\.(cx|rq|rq_pending|rq_retry)_open"
    r"|outlier_detection\.ejections_active|membership_total)"
    r"|http\.[^.]+\.downstream_rq_(active|time))$"
)
STATS_PATH = "/stats/prometheus?" + urllib.parse.urlencode({"filter": STATS_FILTER})

_BREAKER_GAUGES = tuple(f"envoy_cluster_circuit_breakers_default_{k}_open" for k in ("cx", "rq", "rq_pending",
                                                                                        "rq_retry"))
_OVERFLOWS = ("envoy_cluster_upstream_cx_overflow", "envoy_cluster_upstream_rq_pending_overflow",
              "envoy_cluster_upstream_rq_retry_overflow")


@dataclass
class _Histogram:
    """One Envoy histogram series, in seconds."""

    buckets: dict[str, float] = field(default_factory=dict)
    sum_s: float = 0.0


@dataclass
class _Stats:
    """Envoy's samples indexed by (metric name, key label value) for the mapping below."""

    values: dict[str, dict[tuple[str, ...], float]] = field(default_factory=lambda: defaultdict(dict))
    histograms: dict[str, dict[str, _Histogram]] = field(default_factory=lambda: defaultdict(dict))


def _seconds_le(le: str) -> str:
    # Envoy's histograms are in milliseconds; the design's are in seconds (Prometheus convention).
    return le if le == "+Inf" else repr(float(le) / 1000)


def _owner(labels: dict[str, str]) -> str | None:
    """The upstream or listener a sample belongs to; None for what the mapping leaves out."""
    cluster = labels.get("envoy_cluster_name")
    if cluster is not None:
        return None if cluster.startswith(SERVICE_CLUSTER_PREFIX) else cluster
    listener = labels.get("envoy_http_conn_manager_prefix")
    if listener is not None:
        return None if listener == ADMIN_PREFIX else listener
    return None


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_stats(text: str) -> _Stats:
    """Envoy's Prometheus text (the filtered dump) → samples keyed for the mapping.

    Parsed here rather than with prometheus_client's parser: that one renames counters (`upstream_rq{code}`
    and `upstream_rq_total` both become `..._total`) and costs ~10x more per line.
    """
    stats = _Stats()
    histograms: set[str] = set()
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split()
            if len(parts) == 4 and parts[1] == "TYPE" and parts[3] == "histogram":
                histograms.add(parts[2])
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, label_text, value_text = match.groups()
        labels = dict(_LABEL.findall(label_text or ""))
        owner = _owner(labels)
        if owner is None:
            continue
        value = float(value_text)
        base, _, suffix = name.rpartition("_")
        if base in histograms:
            histogram = stats.histograms[base].setdefault(owner, _Histogram())
            if suffix == "bucket":
                histogram.buckets[_seconds_le(labels["le"])] = value
            elif suffix == "sum":
                histogram.sum_s = value / 1000
            continue
        # A status code (upstream_rq_<code>) or class (upstream_rq_<n>xx) when the stat has one.
        code = labels.get("envoy_response_code") or labels.get("envoy_response_code_class", "")
        stats.values[name][(owner, code)] = value
    return stats


def breaker_state(breakers_open: bool, ejected: float, endpoints: float) -> int:
    """0 closed, 1 open (a circuit breaker threshold is reached, or outlier detection ejected every
    endpoint), 2 half-open (outlier detection ejected some endpoints: part of the traffic is cut off)."""
    if breakers_open or (ejected > 0 and ejected >= endpoints):
        return OPEN
    return HALF_OPEN if ejected > 0 else CLOSED


def design_metrics(stats: _Stats) -> Iterator[Metric]:
    """The design's families from Envoy's samples (each family present even before any traffic)."""
    values = stats.values
    upstreams = sorted({owner for name, series in values.items() if name.startswith("envoy_cluster_")
                        for owner, _ in series})

    def per_upstream(name: str, code: str = "") -> dict[str, float]:
        return {owner: value for (owner, c), value in values.get(name, {}).items() if c == code}

    requests = CounterMetricFamily("http_requests", "Requests answered for each upstream, by status (Envoy "
                                   "cluster.<upstream>.upstream_rq_<code>, local rejections of the filters "
                                   "included; method is \"*\": Envoy does not count per method)",
                                   labels=["method", "route", "status"])
    for (upstream, code), value in sorted(values.get("envoy_cluster_upstream_rq", {}).items()):
        if code:
            requests.add_metric(["*", upstream, code], value)
    yield requests

    yield _histogram("http_request_duration_seconds",
                     "Downstream request duration per listener (Envoy http.<listener>.downstream_rq_time)",
                     "listener", stats.histograms.get("envoy_http_downstream_rq_time", {}))

    in_flight = GaugeMetricFamily("http_requests_in_flight",
                                  "Requests in flight per listener (Envoy http.<listener>.downstream_rq_active)",
                                  labels=["listener"])
    for (listener, _), value in sorted(values.get("envoy_http_downstream_rq_active", {}).items()):
        in_flight.add_metric([listener], value)
    yield in_flight

    gauges = [per_upstream(name) for name in _BREAKER_GAUGES]
    ejected = per_upstream("envoy_cluster_outlier_detection_ejections_active")
    endpoints = per_upstream("envoy_cluster_membership_total")
    state = GaugeMetricFamily("circuit_breaker_state", "0 closed, 1 open, 2 half-open (some endpoints ejected)",
                              labels=["upstream"])
    overflows = [per_upstream(name) for name in _OVERFLOWS]
    failures = CounterMetricFamily("circuit_breaker_failures",
                                   "Requests and connections refused by a circuit breaker (Envoy *_overflow)",
                                   labels=["upstream"])
    for upstream in upstreams:
        opened = any(g.get(upstream, 0) >= 1 for g in gauges)
        state.add_metric([upstream], breaker_state(opened, ejected.get(upstream, 0), endpoints.get(upstream, 0)))
        failures.add_metric([upstream], sum(o.get(upstream, 0) for o in overflows))
    yield state
    yield failures

    yield _histogram("upstream_response_time_seconds",
                     "Upstream response time per upstream (Envoy cluster.<upstream>.upstream_rq_time)",
                     "upstream", stats.histograms.get("envoy_cluster_upstream_rq_time", {}))
    yield _per_upstream_counter("upstream_errors", "5xx answered for an upstream, by it or by Envoy for it "
                                "(Envoy upstream_rq_5xx)", upstreams, per_upstream("envoy_cluster_upstream_rq_xx", "5"))
    yield _per_upstream_counter("upstream_timeouts", "Upstream requests that hit the route timeout (Envoy "
                                "upstream_rq_timeout)", upstreams, per_upstream("envoy_cluster_upstream_rq_timeout"))


def _per_upstream_counter(name: str, documentation: str, upstreams: Iterable[str],
                          found: dict[str, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["upstream"])
    for upstream in upstreams:
        family.add_metric([upstream], found.get(upstream, 0))
    return family


def _histogram(name: str, documentation: str, label: str, series: dict[str, _Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for owner, histogram in sorted(series.items()):
        buckets = sorted(histogram.buckets.items(), key=lambda b: float(b[0]))
        family.add_metric([owner], buckets, histogram.sum_s)
    return family


class EnvoyStatsCollector(Collector):
    """Registered in the one process whose /metrics the pod is scraped on (ext_authz's: see README)."""

    def __init__(self, admin_url: str, timeout_s: float = 1.0) -> None:
        self._url = admin_url.rstrip("/") + STATS_PATH
        self._timeout_s = timeout_s

    def describe(self) -> list[Metric]:
        # Nothing up front: registering must not call Envoy (it may start after this process).
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("outrider_envoy_stats_up", "1 when Envoy's admin answered this scrape, else 0 "
                               "(then the gateway's design metrics are missing from it)")
        try:
            # Loopback admin address from the gateway config or --envoy-admin: not user input.
            with urllib.request.urlopen(self._url, timeout=self._timeout_s) as response:  # noqa: S310
                text = response.read().decode()
        except OSError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from design_metrics(parse_stats(text))



def serve_envoy_metrics(admin_url: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Add the collector to the registry the process's /metrics serves (with workers: the parent's)."""
    registry.register(EnvoyStatsCollector(admin_url))
