"""Prometheus metrics of the rate limit service, created in a registry once the service starts (never at import).

Every metric is a real prometheus_client metric, so with `workers > 1` each worker's values reach the
parent's aggregate (multiprocess mode reads only what the metric objects write to their files).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from outrider.metrics import per_registry

DESCRIPTOR_LABELS = ["domain", "descriptor"]
SHED_REASONS = ("deadline", "in_flight")
# Series per (domain, descriptor) at most: `detailed_metric` and limits sent with the descriptor name a
# series after the request's values, which a caller chooses. Past the cap they count under OVERFLOW.
MAX_DESCRIPTOR_SERIES = 10_000
OVERFLOW = "_other"


@dataclass(frozen=True, slots=True)
class DescriptorRow:
    """The four counters of one (domain, descriptor), looked up once: .labels() costs more than .inc()."""

    hits: Counter
    rejections: Counter
    near_limit: Counter
    shadow: Counter
    ban_rejections: Counter  # rejections{reason="ban"}: the address is banned (rate_limits.per_ip.ban)


@dataclass(frozen=True)
class RateLimitMetrics:
    hits: Counter
    rejections: Counter
    near_limit: Counter
    shadow: Counter
    backend_errors: Counter
    failure_mode: Counter
    local_cache_hits: Counter
    internal_errors: Counter
    decision_seconds: Histogram
    shed: Counter
    invalid_requests: Counter
    memory_keys: Gauge
    memory_evictions: Counter
    bans: Counter
    banned_ips: Gauge
    global_shadow: Counter


def _build(registry: CollectorRegistry) -> RateLimitMetrics:
    metrics = RateLimitMetrics(
        hits=Counter("rate_limit_hits_total", "Hits (hits_addend summed) per matched descriptor",
                     DESCRIPTOR_LABELS, registry=registry),
        rejections=Counter("rate_limit_rejections_total", "Descriptors answered OVER_LIMIT, by reason: "
                           "limit (a window or bucket is spent) or ban (the address is banned)",
                           [*DESCRIPTOR_LABELS, "reason"], registry=registry),
        near_limit=Counter("rate_limit_near_limit_total", "Hits past near_limit_ratio of a limit and not past "
                           "the limit itself (envoyproxy/ratelimit's near_limit stat)",
                           DESCRIPTOR_LABELS, registry=registry),
        shadow=Counter("rate_limit_shadow_total", "Over the limit in shadow mode (answered OK)",
                       DESCRIPTOR_LABELS, registry=registry),
        backend_errors=Counter("rate_limit_backend_errors_total", "Store calls that failed or ran over the budget",
                               ["kind"], registry=registry),
        failure_mode=Counter("rate_limit_failure_mode_total", "Requests answered in the failure mode", ["mode"],
                             registry=registry),
        local_cache_hits=Counter(
            "rate_limit_local_cache_hits_total",
            "Requests refused from the local over-limit cache, without a store round trip", registry=registry),
        internal_errors=Counter("rate_limit_internal_errors_total", "Requests that failed inside the service",
                                registry=registry),
        decision_seconds=Histogram(
            "rate_limit_decision_seconds", "Time to answer one ShouldRateLimit, inside the service",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1), registry=registry),
        shed=Counter("rate_limit_shed_total", "Requests answered by their failure policy without a decision, "
                     "because too little of their deadline was left or too many decisions were in flight",
                     ["reason"], registry=registry),
        invalid_requests=Counter("rate_limit_invalid_requests_total",
                                 "Requests refused with INVALID_ARGUMENT (empty domain, descriptors or entries)",
                                 registry=registry),
        # Several workers each keep their own store: their counts add up.
        memory_keys=Gauge("rate_limit_memory_keys", "Counters held by the in-memory store",
                          multiprocess_mode="livesum", registry=registry),
        memory_evictions=Counter("rate_limit_memory_evictions_total",
                                 "Live counters the in-memory store dropped at its max_keys cap (each restarts early)",
                                 registry=registry),
        bans=Counter("rate_limit_bans_total", "Automatic bans started (rate_limits.per_ip.ban), one per address "
                     "and ban, counted by the replica whose request started it", registry=registry),
        # Best effort: bans this process saw in force (started or enforced here, or listed by GET /v1/bans);
        # a ban lifted on another replica leaves this count at its end or at that address's next request.
        banned_ips=Gauge("rate_limit_banned_ips", "Addresses banned now, as far as this process has seen",
                         multiprocess_mode="livemax", registry=registry),
        global_shadow=Counter("rate_limit_global_shadow_total", "Requests over a limit answered OK by the global "
                              "shadow mode (rate_limits.shadow_mode; envoyproxy's global_shadow_mode)",
                              registry=registry),
    )
    # Known label values get their series now: a family with no series is missing from the multiprocess
    # aggregate, and a dashboard cannot tell "none yet" from "not exported".
    for kind in ("timeout", "error", "skipped"):
        metrics.backend_errors.labels(kind=kind)
    for mode in ("allow", "deny"):
        metrics.failure_mode.labels(mode=mode)
    for reason in SHED_REASONS:
        metrics.shed.labels(reason=reason)
    return metrics


class DescriptorCounts:
    """rate_limit_{hits,rejections,near_limit,shadow}_total{domain,descriptor}, children cached per row.

    Both reasons' rejection series exist once a descriptor counts: a dashboard sees 0, not "no data"."""

    def __init__(self, metrics: RateLimitMetrics) -> None:
        self._metrics = metrics
        self._rows: dict[tuple[str, str], DescriptorRow] = {}

    def row(self, domain: str, descriptor: str) -> DescriptorRow:
        key = (domain, descriptor)
        found = self._rows.get(key)
        if found is None:
            if len(self._rows) >= MAX_DESCRIPTOR_SERIES:
                # Domains are the config's (a descriptor has a metric key only when a domain's limit matched).
                key = (domain, OVERFLOW)
                descriptor = OVERFLOW
                found = self._rows.get(key)
                if found is not None:
                    return found
            m = self._metrics
            found = self._rows[key] = DescriptorRow(
                m.hits.labels(domain, descriptor), m.rejections.labels(domain, descriptor, "limit"),
                m.near_limit.labels(domain, descriptor), m.shadow.labels(domain, descriptor),
                m.rejections.labels(domain, descriptor, "ban"))
        return found


# The metrics in a registry (default: the process's), made by the first call: the service's start.
service_metrics = per_registry(_build)
