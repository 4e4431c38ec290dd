"""Compile the gateway config into Envoy v3 resources (plain dicts in Envoy's JSON form) and a bootstrap.

Each outrider service adds its HTTP filter, per-route settings and cluster through the FilterContribution
its plugin gives (outrider/envoy_contribution.py); this module owns listeners, routes, upstream clusters
and order, and names no service.
"""

from __future__ import annotations

import functools
from typing import Any

from outrider.addresses import is_ip_address
from outrider.config.model import GatewayConfig, RouteConfig, UpstreamConfig
from outrider.envoy_access_log import DISTRUSTED_REQUEST_HEADERS, compile_access_logs
from outrider.envoy_contribution import FilterContribution, load_assignment
from outrider.envoy_edge import (
    allows_parameters_anywhere,
    hcm_fields,
    listener_fields,
    overload_manager,
    parameter_guard,
    path_policy_routes,
)
from outrider.envoy_tracing import (
    collector_clusters,
    compile_tracing,
    route_decorator,
    tracing_runtime,
)
from outrider.envoy_traffic import CorsContribution, cluster_fields, header_matcher, route_action_fields, upstream_of
from outrider.identity import IDENTITY_HEADERS
from outrider.plugins import ordered_plugins

READY_PATH = "/health/ready"
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager")


def contributions() -> list[FilterContribution]:
    """In HTTP filter order: CORS (the kernel's) first, then the service plugins' by their filter_order."""
    # CORS first: a preflight is answered by Envoy before any check runs.
    parts: list[FilterContribution] = [CorsContribution()]
    for plugin in ordered_plugins():
        contribution = plugin.contribution()
        # Optional hook: filters a service puts right before its own (ext_authz's native jwt_authn + rbac).
        companions = getattr(contribution, "companions", None)
        if companions is not None:
            parts.extend(companions())
        parts.append(contribution)
    return parts


_LB_POLICY = {
    "round_robin": "ROUND_ROBIN",
    "least_request": "LEAST_REQUEST",
    "random": "RANDOM",
    "ring_hash": "RING_HASH",
    "maglev": "MAGLEV",
}


@functools.lru_cache(maxsize=4096)  # float formatting, per route and cluster of a 10,000-route config
def _duration_ms(ms: int) -> str:
    return f"{ms / 1000:.3f}s"


def _socket_address(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def compile_upstream_cluster(upstream: UpstreamConfig) -> dict[str, Any]:
    """One upstream → one Envoy cluster."""
    static = all(is_ip_address(e.address) for e in upstream.endpoints)
    return {
        "name": upstream.name,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": _duration_ms(upstream.connect_timeout_ms),
        "lb_policy": _LB_POLICY[upstream.lb_policy],
        "load_assignment": load_assignment(
            upstream.name, [(e.address, e.port, e.weight) for e in upstream.endpoints]
        ),
        **cluster_fields(upstream),
    }


def compile_service_clusters(config: GatewayConfig) -> list[dict[str, Any]]:
    return [cluster for c in contributions() for cluster in c.clusters(config)]


def _match(route: RouteConfig) -> dict[str, Any]:
    if route.match.prefix is not None:
        return {"prefix": route.match.prefix}
    if route.match.path is not None:
        return {"path": route.match.path}
    return {"safe_regex": {"regex": route.match.regex}}


_HOOKS: list[Any] = [None, None]


def _route_hooks(config: GatewayConfig) -> tuple[list[tuple[str, Any]], list[Any], list[Any], list[Any],
                                                 list[Any]]:
    """The contributions' per-route hooks, bound once per (frozen) config object: compile_route runs per
    route, 10,000 times for a big config. [xds_server perf fix] Each list keeps contribution order, and the
    hooks see only (route, config), so calling them hook by hook gives what contribution by contribution did.
    """
    if _HOOKS[0] is not config:
        parts = contributions()
        _HOOKS[:] = [config, (
            [(c.filter_name, c.per_route) for c in parts],
            [c.route_fields for c in parts],
            [h for c in parts if (h := getattr(c, "route_headers", None)) is not None],
            [h for c in parts if (h := getattr(c, "route_options", None)) is not None],
            [h for c in parts if (h := getattr(c, "companion_per_route", None)) is not None],
        )]
    hooks: tuple[list[tuple[str, Any]], list[Any], list[Any], list[Any], list[Any]] = _HOOKS[1]
    return hooks


def compile_route(route: RouteConfig, config: GatewayConfig) -> dict[str, Any]:
    """One gateway route → one Envoy route."""
    out: dict[str, Any] = {"name": route.name, "match": _match(route)}
    if route.match.headers:
        out["match"]["headers"] = [header_matcher(h) for h in route.match.headers]
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
        out["route"] = {"cluster": route.upstream, "timeout": _duration_ms(route.timeout_ms),
                        **route_action_fields(route, upstream_of(route, config))}
        decorator = _decorator(config)
        if decorator is not None:
            out["decorator"] = decorator
    if route.resource is None:
        # No check runs here, so nobody sets identity: a client must not be able to claim one.
        out["request_headers_to_remove"] = list(IDENTITY_HEADERS)
    per_filter: dict[str, Any] = {}
    per_route_hooks, route_fields_hooks, route_headers_hooks, route_options_hooks, companion_hooks = \
        _route_hooks(config)
    for filter_name, per_route in per_route_hooks:
        settings = per_route(route, config)
        if settings is not None:
            per_filter[filter_name] = settings
    # Optional hook: per-route settings of the filters a service adds beside its own (http_filters_before/after).
    for companion in companion_hooks:
        per_filter.update(companion(route, config))
    if "route" in out:
        for route_fields in route_fields_hooks:
            fields = route_fields(route, config)
            if fields:
                out["route"].update(fields)
        # Optional hook: header edits on the Route itself (request_headers_to_add, ...), merged.
        for route_headers in route_headers_hooks:
            for key, items in route_headers(route, config).items():
                out.setdefault(key, []).extend(items)
        # Optional hook: fields of the Route itself (request_body_buffer_limit, ...). Route metadata is
        # shared: each service adds its own filter_metadata namespace to it.
        for route_options in route_options_hooks:
            options = route_options(route, config)
            if "metadata" in options and "metadata" in out:
                options = {**options, "metadata": {"filter_metadata": {
                    **out["metadata"]["filter_metadata"], **options["metadata"]["filter_metadata"]}}}
            out.update(options)
    if per_filter:
        out["typed_per_filter_config"] = per_filter
    return out


_PARAMETERS: list[Any] = [None, False]
_DECORATOR: list[Any] = [None, None]


def _decorator(config: GatewayConfig) -> dict[str, Any] | None:
    """The routes' tracing decorator (outrider/envoy_tracing.py), once per (frozen) config object."""
    if _DECORATOR[0] is not config:
        _DECORATOR[:] = [config, route_decorator(config)]
    decorator: dict[str, Any] | None = _DECORATOR[1]
    return decorator


def _parameters_anywhere(config: GatewayConfig) -> bool:
    """Whether some route allows `;` parameters, once per (frozen) config object (asked per route)."""
    if _PARAMETERS[0] is not config:
        _PARAMETERS[:] = [config, allows_parameters_anywhere(config)]
    return bool(_PARAMETERS[1])


def compile_route_group(route: RouteConfig, config: GatewayConfig) -> list[dict[str, Any]]:
    """One gateway route → its Envoy route, preceded by a `;` parameters guard when the route table needs one
    (some other route allows parameters, this one does not)."""
    compiled = compile_route(route, config)
    if route.allow_path_parameters or "route" not in compiled or not _parameters_anywhere(config):
        return [compiled]
    return [parameter_guard(compiled, _no_check_filters(config)), compiled]


def _no_check_filters(config: GatewayConfig) -> dict[str, Any]:
    """typed_per_filter_config of a route the gateway answers itself (every service's `route is None` setting)."""
    return {c.filter_name: s for c in contributions() if (s := c.per_route(None, config)) is not None}


def head_routes(config: GatewayConfig) -> list[dict[str, Any]]:
    """The routes before the config's own: the path policy (outrider/path_policy.py)."""
    return path_policy_routes(config, _no_check_filters(config), _parameters_anywhere(config))


def _not_found_route(config: GatewayConfig) -> dict[str, Any]:
    per_filter = _no_check_filters(config)
    return {
        "name": "outrider-not-found",
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": '{"error":"not_found"}'}},
        "response_headers_to_add": [{
            "header": {"key": "content-type", "value": "application/json"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }],
        "typed_per_filter_config": per_filter,
    }


def compile_route_configuration(config: GatewayConfig, name: str = "outrider_routes",
                                with_routes: bool = True) -> dict[str, Any]:
    """The path policy routes, all routes in config order, then a JSON 404 for anything unmatched.

    with_routes=False leaves the config's routes out (xds_server splices its cached compiled routes in
    after the first len(head_routes(config)) routes).
    """
    routes = [r for route in config.routes for r in compile_route_group(route, config)] if with_routes else []
    return {
        "name": name,
        "virtual_hosts": [{
            "name": "gateway",
            "domains": ["*"],
            "routes": [*head_routes(config), *routes, _not_found_route(config)],
        }],
    }


def compile_http_filters(config: GatewayConfig) -> list[dict[str, Any]]:
    service_clusters = [cluster["name"] for cluster in compile_service_clusters(config)]
    health = {
        # /health/ready is 200 only while every outrider service cluster is healthy.
        "name": "envoy.filters.http.health_check",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
            "pass_through_mode": False,
            "headers": [{"name": ":path", "string_match": {"exact": READY_PATH}}],
            "cluster_min_healthy_percentages": {name: {"value": 100} for name in service_clusters},
        },
    }
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }
    middle: list[dict[str, Any]] = []
    for c in contributions():
        # Optional hooks: filters a service needs right before / after its own (ext_proc's response hold
        # and header_to_metadata).
        middle.extend(getattr(c, "http_filters_before", lambda _: [])(config))
        if (f := c.http_filter(config)) is not None:
            middle.append(f)
        middle.extend(getattr(c, "http_filters_after", lambda _: [])(config))
    return [health, *middle, router]


def gateway_set_headers(config: GatewayConfig) -> list[str]:
    """Request headers removed from client input on arrival: the edge's list (method overrides) and every
    header a service sets for the upstream (optional contribution hook `request_headers_set(config)`)."""
    names = [*config.edge.strip_request_headers, *DISTRUSTED_REQUEST_HEADERS]
    for contribution in contributions():
        hook = getattr(contribution, "request_headers_set", None)
        if hook is not None:
            names.extend(hook(config))
    return names


def compile_listeners(config: GatewayConfig, route_config: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Listeners with a hardened HTTP connection manager (outrider/envoy_edge.py); routes inline unless
    given elsewhere."""
    routes = route_config if route_config is not None else compile_route_configuration(config)
    edge = hcm_fields(config, gateway_set_headers(config))
    access_logs = compile_access_logs(config)
    tracing = compile_tracing(config)
    network_filters = [f for c in contributions() for f in getattr(c, "network_filters", lambda _: [])(config)]
    listeners = []
    for listener in config.listeners:
        hcm = {
            "@type": HCM_TYPE,
            "stat_prefix": listener.name,
            "codec_type": "AUTO",
            # The seed keeps a client's X-Request-ID and makes one only when none was sent.
            "preserve_external_request_id": True,
            **edge,
            # After the edge fields: a gateway with the access log off has no `access_log` at all.
            **({"access_log": access_logs} if access_logs else {}),
            # Only with a collector (outrider/envoy_tracing.py): off, the listener is as it was.
            **(tracing or {}),
            "route_config": routes,
            "http_filters": compile_http_filters(config),
        }
        listeners.append({
            "name": listener.name,
            "address": _socket_address(listener.address, listener.port),
            **listener_fields(config),
            "filter_chains": [{"filters": [*network_filters,
                                           {"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}],
        })
    return listeners


def compile_clusters(config: GatewayConfig) -> list[dict[str, Any]]:
    # The trace collector's cluster (when tracing is on) is no service cluster: /health/ready does not wait
    # for a collector.
    return [*compile_service_clusters(config), *collector_clusters(config),
            *(compile_upstream_cluster(u) for u in config.upstreams)]


def admin_fields(config: GatewayConfig) -> dict[str, Any]:
    # The operator's way in stays open when clients hold every connection the limit allows.
    return {"address": _socket_address(config.admin.address, config.admin.port), "ignore_global_conn_limit": True}


def compile_bootstrap(config: GatewayConfig) -> dict[str, Any]:
    """A static Envoy bootstrap equivalent to the gateway config."""
    runtime = tracing_runtime(config)
    return {
        "node": {"id": "outrider-gateway", "cluster": "outrider"},
        "admin": admin_fields(config),
        "overload_manager": overload_manager(config),
        **({"layered_runtime": runtime} if runtime is not None else {}),
        "static_resources": {
            "listeners": compile_listeners(config),
            "clusters": compile_clusters(config),
        },
    }
