"""Compile the gateway config into Envoy v3 resources (plain dicts in Envoy's JSON form) and a bootstrap."""

from __future__ import annotations

import ipaddress
from typing import Any

from outrider.config.model import GatewayConfig, RouteConfig, UpstreamConfig

IDENTITY_HEADERS = ("x-user-id", "x-user-email", "x-user-roles", "x-user-tier")
EXT_AUTHZ_CLUSTER = "outrider_ext_authz"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
READY_PATH = "/health/ready"

_LB_POLICY = {
    "round_robin": "ROUND_ROBIN",
    "least_request": "LEAST_REQUEST",
    "random": "RANDOM",
    "ring_hash": "RING_HASH",
    "maglev": "MAGLEV",
}
_HTTP2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def _duration_ms(ms: int) -> str:
    return f"{ms / 1000:.3f}s"


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _socket_address(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _load_assignment(name: str, endpoints: list[tuple[str, int, int]]) -> dict[str, Any]:
    return {
        "cluster_name": name,
        "endpoints": [{
            "lb_endpoints": [
                {"endpoint": {"address": _socket_address(a, p)}, "load_balancing_weight": w}
                for a, p, w in endpoints
            ]
        }],
    }


def compile_upstream_cluster(upstream: UpstreamConfig) -> dict[str, Any]:
    """One upstream → one Envoy cluster."""
    static = all(_is_ip(e.address) for e in upstream.endpoints)
    return {
        "name": upstream.name,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": _duration_ms(upstream.connect_timeout_ms),
        "lb_policy": _LB_POLICY[upstream.lb_policy],
        "load_assignment": _load_assignment(
            upstream.name, [(e.address, e.port, e.weight) for e in upstream.endpoints]
        ),
    }


def compile_service_clusters(config: GatewayConfig) -> list[dict[str, Any]]:
    """Clusters for outrider's own gRPC services, health checked so /health/ready means something."""
    authz = config.services.ext_authz
    return [{
        "name": EXT_AUTHZ_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "typed_extension_protocol_options": _HTTP2_OPTIONS,
        "load_assignment": _load_assignment(EXT_AUTHZ_CLUSTER, [(authz.address, authz.port, 1)]),
        "health_checks": [{
            "timeout": "0.5s",
            "interval": "1s",
            "no_traffic_interval": "1s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "grpc_health_check": {},
        }],
    }]


def _match(route: RouteConfig) -> dict[str, Any]:
    if route.match.prefix is not None:
        return {"prefix": route.match.prefix}
    if route.match.path is not None:
        return {"path": route.match.path}
    return {"safe_regex": {"regex": route.match.regex}}


def _authz_per_route(route: RouteConfig) -> dict[str, Any]:
    per_route: dict[str, Any] = {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"}
    if route.resource is None:
        per_route["disabled"] = True
    else:
        # The route carries its policy: ext_authz needs no copy of the route table.
        per_route["check_settings"] = {"context_extensions": {"resource": route.resource, "route": route.name}}
    return per_route


def compile_route(route: RouteConfig) -> dict[str, Any]:
    """One gateway route → one Envoy route."""
    out: dict[str, Any] = {"name": route.name, "match": _match(route)}
    if route.direct_response is not None:
        out["direct_response"] = {
            "status": route.direct_response.status,
            "body": {"inline_string": route.direct_response.body},
        }
        out["response_headers_to_add"] = [{
            "header": {"key": "content-type", "value": route.direct_response.content_type},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }]
    else:
        out["route"] = {"cluster": route.upstream, "timeout": _duration_ms(route.timeout_ms)}
    if route.resource is None:
        # No check runs here, so nobody sets identity: a client must not be able to claim one.
        out["request_headers_to_remove"] = list(IDENTITY_HEADERS)
    out["typed_per_filter_config"] = {EXT_AUTHZ_FILTER: _authz_per_route(route)}
    return out


def _not_found_route() -> dict[str, Any]:
    return {
        "name": "outrider-not-found",
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": '{"error":"not_found"}'}},
        "response_headers_to_add": [{
            "header": {"key": "content-type", "value": "application/json"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }],
        "typed_per_filter_config": {EXT_AUTHZ_FILTER: {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            "disabled": True,
        }},
    }


def compile_route_configuration(config: GatewayConfig, name: str = "outrider_routes") -> dict[str, Any]:
    """All routes in config order, then a JSON 404 for anything unmatched."""
    return {
        "name": name,
        "virtual_hosts": [{
            "name": "gateway",
            "domains": ["*"],
            "routes": [compile_route(r) for r in config.routes] + [_not_found_route()],
        }],
    }


def compile_http_filters(config: GatewayConfig) -> list[dict[str, Any]]:
    authz = config.services.ext_authz
    return [
        {
            # /health/ready is 200 only while every outrider service cluster is healthy.
            "name": "envoy.filters.http.health_check",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
                "pass_through_mode": False,
                "headers": [{"name": ":path", "string_match": {"exact": READY_PATH}}],
                "cluster_min_healthy_percentages": {EXT_AUTHZ_CLUSTER: {"value": 100}},
            },
        },
        {
            "name": EXT_AUTHZ_FILTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "transport_api_version": "V3",
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": EXT_AUTHZ_CLUSTER},
                    "timeout": _duration_ms(authz.timeout_ms),
                },
                "failure_mode_allow": authz.failure_mode_allow,
                "status_on_error": {"code": "Forbidden"},
            },
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        },
    ]


def compile_listeners(config: GatewayConfig, route_config: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Listeners with a hardened HTTP connection manager; routes inline unless given elsewhere."""
    routes = route_config if route_config is not None else compile_route_configuration(config)
    listeners = []
    for listener in config.listeners:
        hcm = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": listener.name,
            "codec_type": "AUTO",
            "use_remote_address": True,
            # Paths are normalised before any route or policy decision sees them.
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": "REJECT_REQUEST",
            "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
            "route_config": routes,
            "http_filters": compile_http_filters(config),
        }
        listeners.append({
            "name": listener.name,
            "address": _socket_address(listener.address, listener.port),
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}],
        })
    return listeners


def compile_clusters(config: GatewayConfig) -> list[dict[str, Any]]:
    return compile_service_clusters(config) + [compile_upstream_cluster(u) for u in config.upstreams]


def compile_bootstrap(config: GatewayConfig) -> dict[str, Any]:
    """A static Envoy bootstrap equivalent to the gateway config."""
    return {
        "node": {"id": "outrider-gateway", "cluster": "outrider"},
        "admin": {"address": _socket_address(config.admin.address, config.admin.port)},
        "static_resources": {
            "listeners": compile_listeners(config),
            "clusters": compile_clusters(config),
        },
    }
