"""Envoy JSON for route and upstream traffic settings: matches, rewrites, retries, LB, breakers, health."""

from __future__ import annotations

from typing import Any

from outrider.config.model import GatewayConfig, RouteConfig, UpstreamConfig
from outrider.config.traffic import HashPolicy, HeaderMatch, HealthCheck, OutlierDetection

CORS_FILTER = "envoy.filters.http.cors"
CORS_POLICY_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"


def duration(ms: int) -> str:
    return f"{ms / 1000:.3f}s"


def header_matcher(match: HeaderMatch) -> dict[str, Any]:
    out: dict[str, Any] = {"name": match.name}
    if match.exact is not None:
        out["string_match"] = {"exact": match.exact}
    elif match.prefix is not None:
        out["string_match"] = {"prefix": match.prefix}
    elif match.regex is not None:
        out["string_match"] = {"safe_regex": {"regex": match.regex}}
    else:
        out["present_match"] = True
    if match.invert:
        out["invert_match"] = True
    return out


def _hash_policy(policy: HashPolicy) -> dict[str, Any]:
    out: dict[str, Any]
    if policy.header is not None:
        out = {"header": {"header_name": policy.header}}
    elif policy.cookie is not None:
        cookie: dict[str, Any] = {"name": policy.cookie.name}
        if policy.cookie.ttl_s is not None:
            cookie["ttl"] = f"{policy.cookie.ttl_s}s"
        if policy.cookie.path is not None:
            cookie["path"] = policy.cookie.path
        out = {"cookie": cookie}
    else:
        out = {"connection_properties": {"source_ip": True}}
    if policy.terminal:
        out["terminal"] = True
    return out


_UPSTREAMS: list[Any] = [None, {}]


def upstream_of(route: RouteConfig, config: GatewayConfig) -> UpstreamConfig | None:
    """The route's upstream; the name index is rebuilt only when the config object changes (10k routes)."""
    if _UPSTREAMS[0] is not config.upstreams:
        _UPSTREAMS[:] = [config.upstreams, {u.name: u for u in config.upstreams}]
    found: UpstreamConfig | None = _UPSTREAMS[1].get(route.upstream)
    return found


def route_action_fields(route: RouteConfig, upstream: UpstreamConfig | None) -> dict[str, Any]:
    """Fields of the route's `route` action beyond cluster and timeout."""
    out: dict[str, Any] = {}
    if route.idle_timeout_ms is not None:
        out["idle_timeout"] = duration(route.idle_timeout_ms)
    if route.rewrite is not None:
        if route.rewrite.prefix is not None:
            out["prefix_rewrite"] = route.rewrite.prefix
        if route.rewrite.regex is not None:
            out["regex_rewrite"] = {
                "pattern": {"regex": route.rewrite.regex.pattern},
                "substitution": route.rewrite.regex.substitution,
            }
        if route.rewrite.host is not None:
            out["host_rewrite_literal"] = route.rewrite.host
    if route.retry is not None:
        retry = route.retry
        policy: dict[str, Any] = {"retry_on": ",".join(retry.retry_on), "num_retries": retry.num_retries}
        if retry.per_try_timeout_ms is not None:
            policy["per_try_timeout"] = duration(retry.per_try_timeout_ms)
        if retry.retriable_status_codes:
            policy["retriable_status_codes"] = list(retry.retriable_status_codes)
        if retry.backoff_base_ms is not None:
            backoff = {"base_interval": duration(retry.backoff_base_ms)}
            if retry.backoff_max_ms is not None:
                backoff["max_interval"] = duration(retry.backoff_max_ms)
            policy["retry_back_off"] = backoff
        out["retry_policy"] = policy
    if upstream is not None and upstream.hash_policy:
        # Hashing is a route setting in Envoy; the upstream owns it here (like Kong's hash_on) so every
        # route to a sticky upstream hashes the same way.
        out["hash_policy"] = [_hash_policy(p) for p in upstream.hash_policy]
    return out


def _outlier_detection(od: OutlierDetection) -> dict[str, Any]:
    out: dict[str, Any] = {
        "consecutive_5xx": od.consecutive_5xx,
        "interval": duration(od.interval_ms),
        "base_ejection_time": duration(od.base_ejection_time_ms),
        "max_ejection_percent": od.max_ejection_percent,
    }
    if od.consecutive_gateway_failure is not None:
        out["consecutive_gateway_failure"] = od.consecutive_gateway_failure
        out["enforcing_consecutive_gateway_failure"] = 100
    return out


def _health_check(hc: HealthCheck) -> dict[str, Any]:
    http: dict[str, Any] = {
        "path": hc.path,
        "expected_statuses": [{"start": s, "end": s + 1} for s in hc.expected_statuses],
    }
    if hc.host is not None:
        http["host"] = hc.host
    return {
        "timeout": duration(hc.timeout_ms),
        "interval": duration(hc.interval_ms),
        # Envoy checks idle clusters only every 60 s by default; a dead endpoint must go at the set pace.
        "no_traffic_interval": duration(hc.interval_ms),
        "unhealthy_threshold": hc.unhealthy_threshold,
        "healthy_threshold": hc.healthy_threshold,
        "http_health_check": http,
    }


def cluster_fields(upstream: UpstreamConfig) -> dict[str, Any]:
    """Cluster fields beyond name, type, timeout, LB policy and endpoints."""
    out: dict[str, Any] = {}
    cb = upstream.circuit_breaker
    if cb is not None:
        limits = {k: v for k, v in cb.model_dump().items() if v is not None}
        out["circuit_breakers"] = {"thresholds": [{"priority": "DEFAULT", **limits}]}
    if upstream.outlier_detection is not None:
        out["outlier_detection"] = _outlier_detection(upstream.outlier_detection)
    if upstream.health_check is not None:
        out["health_checks"] = [_health_check(upstream.health_check)]
    return out


class CorsContribution:
    """The CORS filter (first, so preflights are answered before authorization) and per-route policies."""

    filter_name = CORS_FILTER

    def http_filter(self, config: GatewayConfig) -> dict[str, Any]:
        # Always present, so a route that gains a CORS policy at runtime changes no listener.
        return {
            "name": self.filter_name,
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
        }

    def per_route(self, route: RouteConfig | None, config: GatewayConfig) -> dict[str, Any] | None:
        if route is None or route.cors is None:
            return None
        cors = route.cors
        origins = [{"safe_regex": {"regex": ".*"}} if o == "*" else {"exact": o} for o in cors.allow_origins]
        out: dict[str, Any] = {
            "@type": CORS_POLICY_TYPE,
            "allow_origin_string_match": origins,
            "allow_methods": ",".join(cors.allow_methods),
            "allow_headers": ",".join(cors.allow_headers),
            "max_age": str(cors.max_age_s),
            "allow_credentials": cors.allow_credentials,
        }
        if cors.expose_headers:
            out["expose_headers"] = ",".join(cors.expose_headers)
        return out

    def route_fields(self, route: RouteConfig, config: GatewayConfig) -> dict[str, Any]:
        return {}

    def clusters(self, config: GatewayConfig) -> list[dict[str, Any]]:
        return []
