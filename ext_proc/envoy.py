"""What ext_proc adds to the Envoy config: filter, per-route phases (or disabled), native header edits, cluster."""

from __future__ import annotations

from typing import Any

from ext_proc.config import (
    MUTATION_DISALLOW_REGEX,
    NativeHeaders,
    Phases,
    header_spec,
    native_headers,
    route_phases,
    route_settings,
    settings_of,
    transformations_of,
)
from outrider.config.model import GatewayConfig, RouteConfig
from outrider.envoy_contribution import grpc_service_cluster

EXT_PROC_CLUSTER = "outrider_ext_proc"
ROUTE_METADATA = "x-outrider-route"  # how the processor learns the route (ext_proc/service.py reads it)
# Envoy's own downstream address for the request, sent with the request headers: `${client_ip}` in ext_proc
# is that value (ext_proc/service.py reads it), the same as %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% in
# the native header edits, never a header a client could have written.
CLIENT_ADDRESS_ATTRIBUTE = "source.address"
FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
# Bodies are buffered up to Envoy's buffer limit; a larger one arrives partial and passes untouched.
BODY_MODE = "BUFFERED"


def processing_mode(phases: Phases) -> dict[str, str]:
    return {
        "request_header_mode": "SEND" if phases.request_headers else "SKIP",
        "response_header_mode": "SEND" if phases.response_headers else "SKIP",
        "request_body_mode": BODY_MODE if phases.request_body else "NONE",
        "response_body_mode": BODY_MODE if phases.response_body else "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }


def route_uses_ext_proc(route: RouteConfig, config: GatewayConfig) -> bool:
    return route_phases(route_settings(route, config)).any


_ENABLED: list[Any] = [None, False]


def ext_proc_enabled(config: GatewayConfig) -> bool:
    """Whether any route needs the processor (else no filter, no cluster, no process)."""
    # Asked once per route while compiling: remember the answer for this (frozen) config object, else
    # compiling n routes costs n² (10,000 routes: minutes). [xds_server perf fix]
    if _ENABLED[0] is not config:
        _ENABLED[:] = [config, any(route_uses_ext_proc(route, config) for route in config.routes)]
    return bool(_ENABLED[1])


_NO_HEADERS = NativeHeaders()
_CONFIG_HEADERS: list[Any] = [None, _NO_HEADERS]


def _native_headers(route: RouteConfig, config: GatewayConfig) -> NativeHeaders:
    """The route's native header edits; those of a route without its own transformations come from the
    config alone and are computed once per (frozen) config object. [xds_server perf fix]"""
    if transformations_of(route) is not None or route.direct_response is not None:
        return native_headers(route_settings(route, config).transformations)
    if _CONFIG_HEADERS[0] is not config:
        found = native_headers(route_settings(route, config).transformations)
        _CONFIG_HEADERS[:] = [config, _NO_HEADERS if found == _NO_HEADERS else found]
    shared: NativeHeaders = _CONFIG_HEADERS[1]
    return shared


def _header_option(name: str, value: str, if_absent: bool) -> dict[str, Any]:
    return {"header": {"key": name, "value": value},
            "append_action": "ADD_IF_ABSENT" if if_absent else "OVERWRITE_IF_EXISTS_OR_ADD"}


_SET: list[Any] = [None, []]


def request_headers_set(config: GatewayConfig) -> list[str]:
    """The request headers this service's rules set for the upstream (rename targets and unconditional adds,
    natively or by the processor), once per (frozen) config object. The kernel removes them from client input
    on arrival: a rename sets its target only when the source came, and a failed processor sets nothing, so
    without that a client's own value would pass as the gateway's. `if_absent` adds keep the client's value
    by design and are left out."""
    if _SET[0] is not config:
        names: set[str] = set()
        sections = [transformations_of(config)]
        sections += [route_settings(r, config).transformations for r in config.routes
                     if transformations_of(r) is not None]
        for t in sections:
            if t is None:
                continue
            names.update(t.request.rename_headers.values())
            names.update(n for n, spec in t.request.add_headers.items() if not header_spec(spec).if_absent)
        _SET[:] = [config, sorted({n.lower() for n in names})]
    found: list[str] = _SET[1]
    return found


class ExtProcContribution:
    """ext_proc's FilterContribution (outrider/envoy_contribution.py), with the optional route_headers."""

    filter_name = "envoy.filters.http.ext_proc"

    def http_filter(self, config: GatewayConfig) -> dict[str, Any] | None:
        if not ext_proc_enabled(config):
            return None
        settings = settings_of(config)
        timeout = f"{settings.message_timeout_ms / 1000:.3f}s"
        return {
            "name": self.filter_name,
            "typed_config": {
                "@type": FILTER_TYPE,
                "grpc_service": {"envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER}},
                "failure_mode_allow": settings.failure_mode_allow,
                # Routes say what they need (ExtProcPerRoute); a route that says nothing gets nothing.
                "processing_mode": processing_mode(Phases()),
                "message_timeout": timeout,
                "request_attributes": [CLIENT_ADDRESS_ATTRIBUTE],
                "allow_mode_override": True,  # a request may need fewer phases than its route (never more)
                "mutation_rules": {
                    "allow_all_routing": True,  # :path, to add query parameters; the regex forbids the rest
                    "disallow_expression": {"regex": MUTATION_DISALLOW_REGEX},
                    "disallow_is_error": True,
                },
            },
        }

    def per_route(self, route: RouteConfig | None, config: GatewayConfig) -> dict[str, Any] | None:
        if not ext_proc_enabled(config):
            return None
        phases = route_phases(route_settings(route, config)) if route is not None else Phases()
        if route is None or not phases.any:
            return {"@type": PER_ROUTE_TYPE, "disabled": True}
        return {"@type": PER_ROUTE_TYPE, "overrides": {
            "processing_mode": processing_mode(phases),
            "grpc_initial_metadata": [{"key": ROUTE_METADATA, "value": route.name}],
        }}

    def route_fields(self, route: RouteConfig, config: GatewayConfig) -> dict[str, Any]:
        return {}

    def route_headers(self, route: RouteConfig, config: GatewayConfig) -> dict[str, list[Any]]:
        """Static header edits compiled into the Envoy route (applied by the router, after every filter)."""
        native = _native_headers(route, config)
        if native is _NO_HEADERS:
            return {}
        out: dict[str, list[Any]] = {}
        if native.request_add:
            out["request_headers_to_add"] = [_header_option(*h) for h in native.request_add]
        if native.request_remove:
            out["request_headers_to_remove"] = list(native.request_remove)
        if native.response_add:
            out["response_headers_to_add"] = [_header_option(*h) for h in native.response_add]
        if native.response_remove:
            out["response_headers_to_remove"] = list(native.response_remove)
        return out

    def request_headers_set(self, config: GatewayConfig) -> list[str]:
        return request_headers_set(config)

    def clusters(self, config: GatewayConfig) -> list[dict[str, Any]]:
        if not ext_proc_enabled(config):
            return []
        settings = settings_of(config)
        return [grpc_service_cluster(EXT_PROC_CLUSTER, settings.address, settings.port, settings.workers)]
