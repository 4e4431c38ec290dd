"""What ext_authz adds to the Envoy config: the filter, per-route context_extensions, its cluster; and, when
some route has `enforcement: native`, the jwt_authn and rbac filters before it (ext_authz/native.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ext_authz import native
from ext_authz.config import settings_of
from outrider.config.model import GatewayConfig, RouteConfig
from outrider.envoy_contribution import grpc_service_cluster
from outrider.identity import IDENTITY_HEADERS

EXT_AUTHZ_CLUSTER = "outrider_ext_authz"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"


class ExtAuthzContribution:
    """ext_authz's FilterContribution (outrider/envoy_contribution.py)."""

    filter_name = "envoy.filters.http.ext_authz"

    def http_filter(self, config: GatewayConfig) -> dict[str, Any]:
        authz = settings_of(config)
        return {
            "name": self.filter_name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "transport_api_version": "V3",
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": EXT_AUTHZ_CLUSTER},
                    "timeout": f"{authz.timeout_ms / 1000:.3f}s",
                },
                "failure_mode_allow": authz.failure_mode_allow,
                "status_on_error": {"code": "Forbidden"},
            },
        }

    def per_route(self, route: RouteConfig | None, config: GatewayConfig) -> dict[str, Any]:
        if route is None or route.resource is None or native.is_native(route, config):
            return {"@type": PER_ROUTE_TYPE, "disabled": True}
        # The route carries its policy: ext_authz needs no copy of the route table.
        return {"@type": PER_ROUTE_TYPE,
                "check_settings": {"context_extensions": {"resource": route.resource, "route": route.name}}}

    def route_fields(self, route: RouteConfig, config: GatewayConfig) -> dict[str, Any]:
        return {}

    def route_headers(self, route: RouteConfig, config: GatewayConfig) -> dict[str, list[dict[str, Any]]]:
        """A native route's identity headers that jwt_authn cannot set itself (the default tier)."""
        return native.route_headers(route, config)

    def companions(self) -> list[Any]:
        """The filters right before this one (kernel hook, outrider/envoy_config.py): native enforcement's."""
        return list(NATIVE_CONTRIBUTIONS)

    def request_headers_set(self, config: GatewayConfig) -> tuple[str, ...]:
        """The identity headers: only an allowed check sets them, whatever a client sent is dropped first."""
        return IDENTITY_HEADERS

    def clusters(self, config: GatewayConfig) -> list[dict[str, Any]]:
        authz = settings_of(config)
        return [grpc_service_cluster(EXT_AUTHZ_CLUSTER, authz.address, authz.port, authz.workers)]


@dataclass(frozen=True)
class NativeContribution:
    """One of native enforcement's filters (jwt_authn, rbac, the roles Lua line): in the chain, with its
    per-route config and clusters, only when some route is native."""

    filter_name: str
    filter_of: Callable[[GatewayConfig], dict[str, Any]]
    per_route_of: Callable[[RouteConfig | None, GatewayConfig], dict[str, Any] | None]
    clusters_of: Callable[[GatewayConfig], list[dict[str, Any]]] = lambda _config: []

    def http_filter(self, config: GatewayConfig) -> dict[str, Any] | None:
        return self.filter_of(config) if native.any_native(config) else None

    def per_route(self, route: RouteConfig | None, config: GatewayConfig) -> dict[str, Any] | None:
        return self.per_route_of(route, config) if native.any_native(config) else None

    def route_fields(self, route: RouteConfig, config: GatewayConfig) -> dict[str, Any]:
        return {}

    def clusters(self, config: GatewayConfig) -> list[dict[str, Any]]:
        return self.clusters_of(config) if native.any_native(config) else []


NATIVE_CONTRIBUTIONS = (
    # jwt_authn verifies the token on native routes only; a jwks_url provider's host gets a cluster (a
    # jwks_file is inlined).
    NativeContribution(native.JWT_AUTHN, native.jwt_authn_filter, native.jwt_per_route, native.jwks_clusters),
    # rbac: a native route's grants on the verified payload; no rules of its own elsewhere.
    NativeContribution(native.RBAC, lambda _config: native.rbac_filter(), native.rbac_per_route),
    # lua: x-user-roles from the verified payload's roles (a list claim jwt_authn cannot copy).
    NativeContribution(native.LUA, native.roles_filter, native.roles_per_route),
)
