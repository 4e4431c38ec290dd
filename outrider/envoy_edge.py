"""Envoy JSON for the edge settings: the connection manager's limits, the path policy routes, the headers
removed from client input, the listener buffer and the overload manager (see outrider/config/edge.py)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from outrider.config.model import GatewayConfig
from outrider.path_policy import CHECKS, PARAMETER_CHECK

POLICY_ROUTE_PREFIX = "outrider-path-"
# Headers Envoy itself reads or manages: never removed from client input, whoever names them.
# (X-Forwarded-For carries the trusted hops' client addresses; X-Request-ID is kept by design.)
NEVER_STRIPPED = frozenset({"x-forwarded-for", "x-request-id", "authorization", "host", "content-length",
                            "content-type", "transfer-encoding", "te", "connection", "cookie"})
# A `;` before the query in :path (a header matcher sees the whole request target, query included).
PARAMETERS_IN_PATH = r"[^?]*;.*"
_UNDERSCORES = {"reject": "REJECT_REQUEST", "drop": "DROP_HEADER", "allow": "ALLOW"}
_EARLY_MUTATION_TYPE = ("type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3"
                        ".HeaderMutation")


def _duration(ms: int) -> str:
    return f"{ms / 1000:.3f}s"


def hcm_fields(config: GatewayConfig, stripped: Iterable[str]) -> dict[str, Any]:
    """The HTTP connection manager's edge fields; `stripped` are the request headers removed on arrival."""
    edge = config.edge
    normalize = edge.non_canonical_paths == "normalize"
    common: dict[str, Any] = {
        "idle_timeout": _duration(edge.idle_timeout_ms),
        "headers_with_underscores_action": _UNDERSCORES[edge.headers_with_underscores],
        "max_headers_count": edge.max_headers_count,
    }
    if edge.max_connection_duration_ms is not None:
        common["max_connection_duration"] = _duration(edge.max_connection_duration_ms)
    out: dict[str, Any] = {
        # The connecting peer is the client, unless trusted proxies in front say otherwise (Envoy's
        # "HTTP header sanitizing": a client's X-Forwarded-For is believed only past the trusted hops).
        "use_remote_address": True,
        "xff_num_trusted_hops": edge.xff_num_trusted_hops,
        # reject: the route table must see the path as the client sent it (normalisation would hide %2e,
        # `..` and `\` from the policy routes, Envoy 1.40 checked), and a path that passes them is already
        # normal (outrider/path_policy.py). normalize: Envoy resolves first, the policy routes see the result.
        "normalize_path": normalize,
        "merge_slashes": normalize,
        # %2F and %5C stay as sent so that the policy routes answer them (a JSON 400, not an empty one).
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "request_headers_timeout": _duration(edge.request_headers_timeout_ms),
        "stream_idle_timeout": _duration(edge.stream_idle_timeout_ms),
        "max_request_headers_kb": edge.max_request_headers_kb,
        "common_http_protocol_options": common,
        "http2_protocol_options": {
            "max_concurrent_streams": edge.http2.max_concurrent_streams,
            "initial_stream_window_size": edge.http2.initial_stream_window_size,
            "initial_connection_window_size": edge.http2.initial_connection_window_size,
        },
    }
    if edge.request_timeout_ms is not None:
        out["request_timeout"] = _duration(edge.request_timeout_ms)
    names = sorted({n.lower() for n in stripped} - NEVER_STRIPPED)
    if names:
        # Before routing and before any filter: ext_authz, ext_proc and the upstream see only what the
        # gateway set (route-level removals would run after the filters and drop the gateway's own values).
        out["early_header_mutation_extensions"] = [{
            "name": "envoy.http.early_header_mutation.header_mutation",
            "typed_config": {"@type": _EARLY_MUTATION_TYPE, "mutations": [{"remove": n} for n in names]},
        }]
    return out


def listener_fields(config: GatewayConfig) -> dict[str, Any]:
    return {"per_connection_buffer_limit_bytes": config.edge.connection_buffer_bytes}


def _reject_route(name: str, match: dict[str, Any], per_filter: dict[str, Any]) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": name,
        "match": match,
        "direct_response": {
            "status": 400,
            # json_format escapes the client's X-Request-ID (a text template would let it break the JSON).
            "body_format": {"json_format": {"error": "invalid_path", "request_id": "%REQ(X-REQUEST-ID)%"}},
        },
    }
    if per_filter:
        route["typed_per_filter_config"] = copy.deepcopy(per_filter)  # shared dicts dump as YAML aliases
    return route


def allows_parameters_anywhere(config: GatewayConfig) -> bool:
    return any(route.allow_path_parameters for route in config.routes)


def path_policy_routes(config: GatewayConfig, per_filter: dict[str, Any],
                       parameters_anywhere: bool | None = None) -> list[dict[str, Any]]:
    """The first routes of the table: a confusing path is a 400 before any route of the config can take it.

    `;` parameters are refused here too unless some route allows them; then each route that does not
    gets a guard in front of it instead (parameter_guard), so only those routes see them.
    """
    if parameters_anywhere is None:
        parameters_anywhere = allows_parameters_anywhere(config)
    checks = CHECKS if parameters_anywhere else (*CHECKS, PARAMETER_CHECK)
    return [_reject_route(POLICY_ROUTE_PREFIX + name, {"safe_regex": {"regex": regex}}, per_filter)
            for name, regex in checks]


def parameter_guard(compiled_route: dict[str, Any], per_filter: dict[str, Any]) -> dict[str, Any]:
    """A 400 for `;` parameters on exactly the requests `compiled_route` would take (placed right before it)."""
    match = dict(compiled_route["match"])
    match["headers"] = [*match.get("headers", []),
                        {"name": ":path", "string_match": {"safe_regex": {"regex": PARAMETERS_IN_PATH}}}]
    return _reject_route(f"{POLICY_ROUTE_PREFIX}parameters:{compiled_route['name']}", match, per_filter)


def overload_manager(config: GatewayConfig) -> dict[str, Any]:
    """Envoy's overload manager: a fixed heap budget and the global downstream connection limit."""
    edge = config.edge
    heap = "envoy.resource_monitors.fixed_heap"
    return {
        "refresh_interval": "0.250s",
        "resource_monitors": [
            {"name": heap, "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                "max_heap_size_bytes": edge.max_heap_bytes}},
            # Proactive: Envoy refuses connections beyond the limit as they arrive (no action to configure).
            {"name": "envoy.resource_monitors.global_downstream_max_connections", "typed_config": {
                "@type": ("type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
                          ".DownstreamConnectionsConfig"),
                "max_active_downstream_connections": edge.max_connections}},
        ],
        # The thresholds of Envoy's edge best practices (edge.yaml).
        "actions": [
            {"name": "envoy.overload_actions.shrink_heap",
             "triggers": [{"name": heap, "threshold": {"value": 0.95}}]},
            {"name": "envoy.overload_actions.stop_accepting_requests",
             "triggers": [{"name": heap, "threshold": {"value": 0.98}}]},
        ],
    }
