"""Prometheus metrics of the ext_authz service, created in a registry once the service starts (never at import)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from outrider.metrics import per_registry


@dataclass(frozen=True)
class AuthzMetrics:
    checks: Counter
    check_seconds: Histogram
    jwks_refreshes: Counter
    errors: Counter


def _build(registry: CollectorRegistry) -> AuthzMetrics:
    metrics = AuthzMetrics(
        checks=Counter("authz_checks_total", "ext_authz Check decisions", ["decision", "reason"],
                       registry=registry),
        check_seconds=Histogram(
            "authz_check_duration_seconds", "Time to decide one Check, inside the service",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
            registry=registry),
        jwks_refreshes=Counter("authz_jwks_updates_total", "Key sets loaded or rotated", ["provider"],
                               registry=registry),
        errors=Counter("authz_internal_errors_total", "Checks that failed inside the service (answered deny)",
                       registry=registry),
    )
    return metrics


class DecisionCounter:
    """Caches labelled children: .labels() costs more than the increment on the hot path."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[tuple[str, str], Counter] = {}

    def inc(self, decision: str, reason: str) -> None:
        key = (decision, reason)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._counter.labels(decision=decision, reason=reason)
        child.inc()


# The metrics in a registry (default: the process's), made by the first call: the service's start.
service_metrics = per_registry(_build)
