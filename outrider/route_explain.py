"""`outrider explain-route`: which hops one route's requests take, read from the route Envoy is given, and why.

Whether a hop runs is read from the compiled Envoy route (its per-filter config and rate limit actions),
never decided a second time here, so the explanation cannot disagree with what Envoy does. The reasons
come from each service plugin's optional `explain(route, config) -> list[str]` hook; its optional
`explain_verdict(route, config) -> str | None` replaces the hop line where Envoy does the service's work itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from outrider.config.model import GatewayConfig, RouteConfig
from outrider.envoy_config import compile_http_filters, compile_route

_PHASES = (("request_header_mode", "request headers", "SKIP"), ("request_body_mode", "request body", "NONE"),
           ("response_header_mode", "response headers", "SKIP"), ("response_body_mode", "response body", "NONE"))


def _header_edits(envoy_route: dict[str, Any], direction: str) -> list[str]:
    edits = []
    for item in envoy_route.get(f"{direction}_headers_to_add", []):
        header = item["header"]
        verb = "add if absent" if item.get("append_action") == "ADD_IF_ABSENT" else "set"
        edits.append(f"{verb} {header['key']}: {header['value']}")
    removed = envoy_route.get(f"{direction}_headers_to_remove", [])
    if removed:
        edits.append("remove " + ", ".join(removed))
    return edits


def _descriptor(actions: Sequence[dict[str, Any]]) -> str:
    keys = []
    for action in actions:
        kind, body = next(iter(action.items()))
        if kind == "remote_address":
            keys.append("remote_address")
        elif "descriptor_value" in body:
            keys.append(f"{body['descriptor_key']}={body['descriptor_value']}")
        else:
            keys.append(str(body.get("descriptor_key", kind)))
    return "(" + ", ".join(keys) + ")"


def hop_state(filter_name: str, envoy_route: dict[str, Any]) -> str | None:
    """What the compiled route asks of one service's filter: None when the filter does not run on it."""
    per_filter = envoy_route.get("typed_per_filter_config", {}).get(filter_name)
    if per_filter is not None and per_filter.get("disabled"):
        return None
    if filter_name == "envoy.filters.http.ratelimit":
        # The rate limit filter calls the service only for the route's rate limit actions.
        limits = envoy_route.get("route", {}).get("rate_limits", [])
        if not limits:
            return None
        return "descriptors " + " ".join(_descriptor(limit["actions"]) for limit in limits)
    mode = (per_filter or {}).get("overrides", {}).get("processing_mode")
    if mode is not None:
        phases = [label for key, label, off in _PHASES if mode.get(key, off) != off]
        if not phases:
            return None
        return "messages: " + ", ".join(phases)
    return "runs"


def explain_route(config: GatewayConfig, route: RouteConfig, plugins: Iterable[Any]) -> list[str]:
    """The lines `outrider explain-route` prints for one route."""
    envoy_route = compile_route(route, config)
    match = " ".join(f"{k} {v}" for k, v in envoy_route["match"].items() if k != "headers")
    lines = [f"route {route.name}: {match}"]
    if route.direct_response is not None:
        lines.append(f"  answered by Envoy itself (direct_response {route.direct_response.status}): no hop")
    else:
        lines.append(f"  upstream {route.upstream}")
    for direction in ("request", "response"):
        edits = _header_edits(envoy_route, direction)
        if edits:
            lines.append(f"  Envoy edits {direction} headers itself (no hop): " + "; ".join(edits))
    in_chain = {http_filter["name"] for http_filter in compile_http_filters(config)}
    hops = 0
    for plugin in plugins:
        name = plugin.contribution().filter_name
        state = hop_state(name, envoy_route)
        hook = getattr(plugin, "explain", None)
        reasons = list(hook(route, config)) if hook is not None else []
        # Optional hook: a plugin whose work Envoy does itself on this route says so (no hop).
        own = getattr(plugin, "explain_verdict", lambda _r, _c: None)(route, config)
        if own is not None:
            verdict = own
        elif name not in in_chain:
            verdict = "skipped (its filter is not in Envoy's chain: no route needs it)"
        elif state is None:
            verdict = "skipped"
        else:
            verdict, hops = f"hop, {state}", hops + 1
        lines.append(f"  {plugin.name}: {verdict}")
        lines.extend(f"    - {reason}" for reason in reasons)
    lines.append(f"  {hops} service hop{'s' if hops != 1 else ''} per request")
    return lines
