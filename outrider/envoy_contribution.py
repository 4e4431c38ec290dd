"""What a service's Envoy compile step gives the kernel's compiler (FilterContribution), and the helpers
it builds with: the health-checked cluster of an outrider gRPC service."""

from __future__ import annotations

from typing import Any, Protocol

from outrider.config.model import GatewayConfig, RouteConfig

HTTP2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}
# To a gRPC service with several workers on one port (SO_REUSEPORT): the kernel deals each new connection
# to one worker, and Envoy keeps one HTTP/2 connection per thread for ever, so 2 workers may get both
# connections on one of them (measured: one ext_proc worker took all the load). Few streams per connection
# open more connections under load, and recycling a connection every 250 streams re-deals them, so the
# workers' shares even out. One worker keeps plain multiplexing (fewer connections cost less CPU).
GRPC_WORKERS_HTTP2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"max_requests_per_connection": 250},
        "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 4}},
    }
}


class FilterContribution(Protocol):
    """What one outrider service adds to the Envoy config.

    Optional: `route_headers(route, config) -> dict[str, list]`, header edits merged into the Envoy route
    itself (request_headers_to_add, ...), for a service whose edits Envoy can do natively;
    `route_options(route, config) -> dict[str, Any]`, fields set on the Envoy route itself (e.g. its
    request_body_buffer_limit); `request_headers_set(config) -> Iterable[str]`, the request headers the
    service sets for the upstream, which the kernel removes from client input before routing
    (outrider/envoy_edge.py); `network_filters(config) -> list[dict]`, network filters placed before the
    HTTP connection manager on every listener (e.g. a per-connection rate limit);
    `companions() -> list[FilterContribution]`: more filters of the same service, put right before its own
    in the chain (ext_authz's jwt_authn and rbac for native enforcement); and
    `http_filters_before(config)` / `http_filters_after(config) -> list[dict]`, HTTP filters placed right
    before / after the service's own, with `companion_per_route(route, config) -> dict[str, Any]`, their
    typed_per_filter_config entries for a route (by filter name).
    """

    @property
    def filter_name(self) -> str: ...

    def http_filter(self, config: GatewayConfig) -> dict[str, Any] | None: ...

    def per_route(self, route: RouteConfig | None, config: GatewayConfig) -> dict[str, Any] | None:
        """typed_per_filter_config for a route (None = the catch-all 404 route)."""
        ...

    def route_fields(self, route: RouteConfig, config: GatewayConfig) -> dict[str, Any]:
        """Extra fields merged into the route's `route` action (e.g. rate_limits)."""
        ...

    def clusters(self, config: GatewayConfig) -> list[dict[str, Any]]: ...


def load_assignment(name: str, endpoints: list[tuple[str, int, int]]) -> dict[str, Any]:
    """A cluster's endpoints: (address, port, weight) each."""
    return {
        "cluster_name": name,
        "endpoints": [{
            "lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": a, "port_value": p}}},
                 "load_balancing_weight": w}
                for a, p, w in endpoints
            ]
        }],
    }


def grpc_service_cluster(name: str, address: str, port: int, workers: int = 1) -> dict[str, Any]:
    """A cluster for one of outrider's gRPC services, health checked so /health/ready means something."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "typed_extension_protocol_options": HTTP2_OPTIONS if workers <= 1 else GRPC_WORKERS_HTTP2_OPTIONS,
        "load_assignment": load_assignment(name, [(address, port, 1)]),
        "health_checks": [{
            "timeout": "0.5s",
            "interval": "1s",
            "no_traffic_interval": "1s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "grpc_health_check": {},
        }],
    }


# Debian's (and the image's) bundle of the system's trusted CAs.
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"


def verified_tls_socket(host: str) -> dict[str, Any]:
    """An upstream TLS transport socket that checks the server's certificate against the system CAs and its
    name against `host` (SNI too): for clusters to services outside the gateway (a JWKS URL, a collector)."""
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": host,
        "common_tls_context": {"validation_context": {
            "trusted_ca": {"filename": SYSTEM_CA_FILE},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}],
        }},
    }}
