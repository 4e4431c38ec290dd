"""What rate limiting adds to the Envoy config: the filter, per-route descriptor actions, the RLS cluster.

Descriptors (domain `rate_limits.domain`) that ratelimit_service's compiled table expects:
  [remote_address=<client ip>]                       per-IP plan (public routes, or all with apply_to: all)
  [tier=<tier>, user_id=<user>]                      tier plans; both from ext_authz's dynamic metadata, or
                                                     on a native route from jwt_authn's verified payload
  [endpoint=<path, or prefix + '*'>]                 endpoint limits, shared by every caller
  [outrider_failure_mode=allow|deny]                 a route whose failure policy is not the gateway's
  [connection_address=<peer ip>]                     new connections per second per address (network filter)

With `rate_limits.enforcement: local` the same actions feed Envoy's local_ratelimit filter instead
(ratelimit_service/local_limits.py): no rate limit filter, no cluster, no call.
"""

from __future__ import annotations

import re
from typing import Any

from outrider.config.model import GatewayConfig, RouteConfig
from outrider.envoy_contribution import grpc_service_cluster
from ratelimit_service.config import (
    CONNECTION_KEY,
    FAILURE_MODE_KEY,
    EndpointLimit,
    RateLimitsConfig,
    rate_limits_of,
    route_covers,
    route_failure_mode,
    settings_of,
)
from ratelimit_service.local_limits import answer_filter as local_answer_filter
from ratelimit_service.local_limits import http_filter as local_http_filter
from ratelimit_service.local_limits import is_local
from ratelimit_service.local_limits import off_on_route as local_off_on_route
from ratelimit_service.local_limits import route_metadata as local_route_metadata

RATELIMIT_CLUSTER = "outrider_ratelimit"
AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
ANONYMOUS = "anonymous"


# A route ext_authz enforces natively (its `enforcement: native`, ext_authz/native.py) is checked by Envoy's
# jwt_authn, which files the verified token's payload under its namespace at this key.
JWT_NAMESPACE = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD_KEY = "outrider_payload"


def _metadata(descriptor_key: str, key: str) -> dict[str, Any]:
    return {"metadata": {
        "descriptor_key": descriptor_key,
        "metadata_key": {"key": AUTHZ_NAMESPACE, "path": [{"key": key}]},
        "source": "DYNAMIC",
        "default_value": ANONYMOUS,
    }}


def _payload(descriptor_key: str, claim: str, default: str) -> dict[str, Any]:
    return {"metadata": {
        "descriptor_key": descriptor_key,
        "metadata_key": {"key": JWT_NAMESPACE, "path": [{"key": JWT_PAYLOAD_KEY}, {"key": claim}]},
        "source": "DYNAMIC",
        "default_value": default,
    }}


def native_identity(route: RouteConfig, config: GatewayConfig) -> tuple[str, str] | None:
    """(tier claim, default tier) when Envoy's jwt_authn, not ext_authz, checks this route's token.

    Read by name from ext_authz's settings (route `enforcement`, else `auth.enforcement`; the tier claim and
    default tier every provider shares, which ext_authz's validation requires of native routes): services
    never import each other.
    """
    own = getattr(route, "enforcement", None)
    auth = getattr(config, "auth", None)
    mode = getattr(own, "root", None) or getattr(auth, "enforcement", "python")
    if mode != "native" or auth is None or route.resource is None:
        return None
    provider = auth.providers[0]
    return str(provider.tier_claim), str(provider.default_tier)


def _path_regex(endpoint: EndpointLimit) -> str:
    # :path carries the query string; the limit is on the path alone.
    if endpoint.path is not None:
        return "^" + re.escape(endpoint.path) + r"(\?.*)?$"
    return "^" + re.escape(str(endpoint.prefix)) + ".*$"


def _tier_actions(route: RouteConfig, config: GatewayConfig) -> tuple[str, list[dict[str, Any]]]:
    """The (tier, user_id) actions of a protected route, named by where they read the caller from."""
    native = native_identity(route, config)
    if native is None:
        # ext_authz ran before us on this route and left the caller's tier and id in its metadata.
        return "tier_authz", [_metadata("tier", "tier"), _metadata("user_id", "user_id")]
    # The same descriptor from the verified claims jwt_authn left (the default tier as ext_authz's).
    tier_claim, default_tier = native
    return "tier_jwt", [_payload("tier", tier_claim, default_tier), _payload("user_id", "sub", ANONYMOUS)]


def route_limits(route: RouteConfig, config: GatewayConfig,
                 rl: RateLimitsConfig) -> list[tuple[str, list[dict[str, Any]]]]:
    """The limits on a route, each as (its name, the descriptor actions the service path sends for it)."""
    limits: list[tuple[str, list[dict[str, Any]]]] = []
    if rl.per_ip is not None and (route.public or rl.per_ip.apply_to == "all"):
        limits.append(("per_ip", [{"remote_address": {}}]))
    if route.resource is not None and (rl.tiers or rl.unknown_tier):
        limits.append(_tier_actions(route, config))
    for index, endpoint in enumerate(rl.endpoints):
        if route_covers(route, endpoint):
            limits.append((f"endpoint_{index}", [{"header_value_match": {
                "descriptor_key": "endpoint",
                "descriptor_value": endpoint.value,
                "headers": [{"name": ":path", "string_match": {"safe_regex": {"regex": _path_regex(endpoint)}}}],
            }}]))
    return limits


def local_action_lists(config: GatewayConfig, rl: RateLimitsConfig) -> dict[str, list[dict[str, Any]]]:
    """Every limit's actions, by name, over all routes (the local_ratelimit filter holds them once)."""
    named: dict[str, list[dict[str, Any]]] = {}
    for route in config.routes:
        if route.direct_response is None:
            for name, actions in route_limits(route, config, rl):
                named.setdefault(name, actions)
    return named


class RateLimitContribution:
    """The rate limiter's FilterContribution (outrider/envoy_contribution.py)."""

    filter_name = "envoy.filters.http.ratelimit"

    def http_filter(self, config: GatewayConfig) -> dict[str, Any] | None:
        rl = rate_limits_of(config)
        if rl is None:
            return None
        if is_local(rl):
            # Counted in Envoy: its local_ratelimit filter, at the same place in the chain.
            return local_http_filter(rl, local_action_lists(config, rl))
        service = settings_of(config)
        return {
            "name": self.filter_name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                "domain": rl.domain,
                "request_type": "both",
                "timeout": f"{service.timeout_ms / 1000:.3f}s",
                "failure_mode_deny": rl.failure_mode == "deny",
                "rate_limit_service": {
                    "grpc_service": {"envoy_grpc": {"cluster_name": RATELIMIT_CLUSTER}},
                    "transport_api_version": "V3",
                },
            },
        }

    def per_route(self, route: RouteConfig | None, config: GatewayConfig) -> dict[str, Any] | None:
        return None

    def http_filters_before(self, config: GatewayConfig) -> list[dict[str, Any]]:
        """Local mode: the Lua filter that gives local_ratelimit's answers the service path's headers and body."""
        rl = rate_limits_of(config)
        return [local_answer_filter(rl)] if rl is not None and is_local(rl) else []

    def network_filters(self, config: GatewayConfig) -> list[dict[str, Any]]:
        """Envoy's network rate limit filter when new connections are limited per address: it asks the service
        once per new connection, before any byte is read, and closes the connection when it is over. The
        descriptor's value is a substitution format (envoyproxy/envoy#19875, network RateLimit descriptors):
        the peer's address, which no client header can change."""
        rl = rate_limits_of(config)
        if rl is None or is_local(rl) or rl.per_ip is None or rl.per_ip.new_connections_per_second is None:
            return []
        service = settings_of(config)
        return [{
            "name": "envoy.filters.network.ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.ratelimit.v3.RateLimit",
                "stat_prefix": "outrider_connections",
                "domain": rl.domain,
                "descriptors": [{"entries": [{"key": CONNECTION_KEY,
                                              "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}]}],
                "timeout": f"{service.timeout_ms / 1000:.3f}s",
                "failure_mode_deny": rl.failure_mode == "deny",
                "rate_limit_service": {
                    "grpc_service": {"envoy_grpc": {"cluster_name": RATELIMIT_CLUSTER}},
                    "transport_api_version": "V3",
                },
            },
        }]

    def route_fields(self, route: RouteConfig, config: GatewayConfig) -> dict[str, Any]:
        rl = rate_limits_of(config)
        if rl is None or is_local(rl):
            return {}  # local mode: the actions are the local_ratelimit filter's own (route_options gates them)
        limits = [{"actions": actions} for _, actions in route_limits(route, config, rl)]
        if limits and route_failure_mode(route, rl) != rl.failure_mode:
            # Envoy's failure_mode_deny is one per filter: a route that fails otherwise tells the service,
            # which answers this route's undecidable requests (store down, load shed) by its policy.
            limits.append({"actions": [{"generic_key": {
                "descriptor_key": FAILURE_MODE_KEY, "descriptor_value": route_failure_mode(route, rl)}}]})
        return {"rate_limits": limits} if limits else {}

    def companion_per_route(self, route: RouteConfig, config: GatewayConfig) -> dict[str, Any]:
        """Local mode: local_ratelimit and its answer filter are off on a route no limit covers."""
        rl = rate_limits_of(config)
        if not is_local(rl):
            return {}
        assert rl is not None
        covered = route.direct_response is None and route_limits(route, config, rl)
        return {} if covered else local_off_on_route()

    def route_options(self, route: RouteConfig, config: GatewayConfig) -> dict[str, Any]:
        """Local mode: the route's metadata names the limits that apply to it (local_limits.route_gates)."""
        rl = rate_limits_of(config)
        if not is_local(rl) or route.direct_response is not None:
            return {}
        assert rl is not None
        gates = [gate for gate, _ in route_limits(route, config, rl)]
        return local_route_metadata(gates) if gates else {}

    def clusters(self, config: GatewayConfig) -> list[dict[str, Any]]:
        rl = rate_limits_of(config)
        if rl is None or is_local(rl):
            return []  # local mode: nothing to call
        service = settings_of(config)
        return [grpc_service_cluster(RATELIMIT_CLUSTER, service.address, service.port, service.workers)]
