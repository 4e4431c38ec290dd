"""Prometheus metrics of the ext_authz service."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

CHECKS = Counter("authz_checks_total", "ext_authz Check decisions", ["decision", "reason"])
CHECK_SECONDS = Histogram(
    "authz_check_duration_seconds", "Time to decide one Check, inside the service",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
)
JWKS_REFRESHES = Counter("authz_jwks_updates_total", "Key sets loaded or rotated", ["provider"])
ERRORS = Counter("authz_internal_errors_total", "Checks that failed inside the service (answered deny)")


class DecisionCounter:
    """Caches labelled children: .labels() costs more than the increment on the hot path."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str], Counter] = {}

    def inc(self, decision: str, reason: str) -> None:
        key = (decision, reason)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = CHECKS.labels(decision=decision, reason=reason)
        child.inc()
