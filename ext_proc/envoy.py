"""What ext_proc adds to the Envoy config: filter, per-route phases (or disabled), native header edits, cluster."""

from __future__ import annotations

from typing import Any

from ext_proc.config import (
    MUTATION_DISALLOW_REGEX,
    NativeHeaders,
    Phases,
    RouteSettings,
    TransformationsConfig,
    cache_of,
    header_spec,
    native_headers,
    route_phases,
    route_settings,
    settings_of,
    transformations_of,
)
from outrider.config.model import GatewayConfig, RouteConfig
from outrider.envoy_access_log import CACHE_NAMESPACE
from outrider.envoy_contribution import grpc_service_cluster

EXT_PROC_CLUSTER = "outrider_ext_proc"
ROUTE_METADATA = "x-outrider-route"  # how the processor learns the route (ext_proc/service.py reads it)
# Envoy's own downstream address for the request, sent with the request headers: `${client_ip}` in ext_proc
# is that value (ext_proc/service.py reads it), the same as %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% in
# the native header edits, never a header a client could have written.
CLIENT_ADDRESS_ATTRIBUTE = "source.address"
FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
# Request bodies are BUFFERED: Envoy sends the whole body in one message and keeps a declared
# content-length (Envoy drops that header for BUFFERED_PARTIAL bodies). A request body of unknown length
# (chunked; HTTP/2 without content-length) is switched to BUFFERED_PARTIAL by the processor's answer to the
# headers (mode_override): in BUFFERED, such a body above the buffer limit stalls when a filter before
# ext_proc (ext_authz) held it with watermarks — Envoy buffers it, stops reading and waits for an end of
# stream it will never read: no answer, and the stream held after the client gives up (seen with Envoy
# 1.40) — while BUFFERED_PARTIAL sends what fits with end_of_stream false and the processor answers 413
# (processing_mode.proto: "If the body exceeds the configured buffer limit, then the body contents up to
# the buffer limit will be sent"). A declared length above the route's max_body_bytes never gets here
# (refused or not buffered at the headers), and the route's buffer limit (request_buffer_limit) holds any
# other, so BUFFERED cannot overflow.
REQUEST_BODY_MODE = "BUFFERED"
# Response bodies are BUFFERED_PARTIAL: their length is only known after the processor has answered the
# request, and in BUFFERED a response body above the upstream connection's buffer limit that arrives
# before the processor's answer to the response headers is a 500 from Envoy (a race the upstream's speed
# decides). BUFFERED_PARTIAL gives the processor the part that fits, cut short, every time: it passes
# the response on or answers 502 (oversize_body). The price: Envoy drops content-length from responses on
# routes whose response bodies ext_proc reads (they go out chunked, or framed by HTTP/2).
RESPONSE_BODY_MODE = "BUFFERED_PARTIAL"
# Routes that only edit JSON response bodies skip the response headers message (two messages per request):
# the processor still needs the response's content-type to leave non-JSON bodies alone. Envoy 1.40 does not
# evaluate response-header attributes (`response.headers[...]`) when response_header_mode is SKIP
# (envoyproxy/envoy#43981; checked on the venv's Envoy), but dynamic metadata is there: header_to_metadata,
# placed after ext_proc in the chain, sees the response headers first (encoder filters run in reverse
# order) and copies content-type into RESPONSE_NAMESPACE, which ext_proc forwards with the body message
# (metadata_options.forwarding_namespaces → ProcessingRequest.metadata_context). A response without the
# header gets NO_CONTENT_TYPE, so that a missing namespace (no such filter: someone else's Envoy config)
# is told apart from a missing header, and refused rather than passed on untransformed (ext_proc/session.py).
RESPONSE_NAMESPACE = "outrider.response"
CONTENT_TYPE_KEY = "content_type"
NO_CONTENT_TYPE = "-"
HEADER_TO_METADATA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"


# Without a response headers message Envoy sends the headers on at once, and an answer to the body that
# refuses it (502: unreadable JSON) can only reset a response already begun (seen with Envoy 1.40). A Lua
# filter before ext_proc in the chain (encoder filters run in reverse order: after it) holds the response
# until its body is complete (handle:body(): "yield the script until the entire body has been buffered",
# Envoy Lua filter docs), so that ext_proc's immediate response still replaces the whole response. Only on
# body-only routes (the filter is off elsewhere; its limit is in the route's metadata, route_options), and
# only a body of declared length within that limit (the route's max_body_bytes, at most the connection
# buffer): a larger or chunked one is not held, as Envoy could not buffer it (its own 500), and goes out as
# before, cut short by a reset if refused.
# The declared length is header_to_metadata's copy: ext_proc has removed content-length (BUFFERED_PARTIAL)
# before the Lua filter sees the headers.
# A name of its own (not the extension's): native enforcement has a Lua filter too; per-route configs and the
# route metadata the script reads go by this name.
LUA_FILTER = "outrider.ext_proc_response_hold"
LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
LUA_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
FILTER_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
HOLD_SCRIPT_NAME = "outrider_hold_response"
HOLD_KEY = "hold_response_bytes"
CONTENT_LENGTH_KEY = "content_length"
HOLD_SCRIPT = f"""function envoy_on_response(handle)
  local limit = handle:metadata():get("{HOLD_KEY}")
  if limit then
    local seen = handle:streamInfo():dynamicMetadata():get("{{namespace}}")
    local length = seen and tonumber(seen["{CONTENT_LENGTH_KEY}"])
    if length and length <= limit then
      handle:body()
    end
  end
end
"""


def response_hold_filter() -> dict[str, Any]:
    """The Lua filter that holds a body-only route's response until ext_proc has answered its body. Off
    unless a route turns it on (HttpFilter.disabled): a Lua call costs every other route's requests CPU."""
    script = HOLD_SCRIPT.replace("{namespace}", RESPONSE_NAMESPACE)
    return {"name": LUA_FILTER, "disabled": True,
            "typed_config": {"@type": LUA_TYPE, "source_codes": {HOLD_SCRIPT_NAME: {"inline_string": script}}}}


# A route's switch for the hold (FilterConfig enables a filter that is off by default).
HOLD_ON = {"@type": FILTER_CONFIG_TYPE, "config": {"@type": LUA_PER_ROUTE_TYPE, "name": HOLD_SCRIPT_NAME}}


def response_metadata_filter() -> dict[str, Any]:
    """The header_to_metadata filter that hands the response's content-type to ext_proc's body message."""
    target = {"metadata_namespace": RESPONSE_NAMESPACE, "key": CONTENT_TYPE_KEY, "type": "STRING"}
    length = {"metadata_namespace": RESPONSE_NAMESPACE, "key": CONTENT_LENGTH_KEY, "type": "STRING"}
    return {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": HEADER_TO_METADATA_TYPE,
            "response_rules": [{"header": "content-type", "on_header_present": target,
                                "on_header_missing": {**target, "value": NO_CONTENT_TYPE}, "remove": False},
                               # For the response hold (HOLD_SCRIPT) only.
                               {"header": "content-length", "on_header_present": length, "remove": False}],
        },
    }


def processing_mode(phases: Phases) -> dict[str, str]:
    return {
        "request_header_mode": "SEND" if phases.request_headers else "SKIP",
        "response_header_mode": "SEND" if phases.response_headers else "SKIP",
        "request_body_mode": REQUEST_BODY_MODE if phases.request_body else "NONE",
        "response_body_mode": RESPONSE_BODY_MODE if phases.response_body else "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }


_LAST_SETTINGS: list[Any] = [None, None, None]


def _settings(route: RouteConfig, config: GatewayConfig) -> RouteSettings:
    """route_settings, remembered for the last route: compile_route asks per_route and route_options in
    turn for the same route (10,000 routes: twice the merging otherwise). [xds_server perf fix]"""
    if _LAST_SETTINGS[0] is not route or _LAST_SETTINGS[1] is not config:
        _LAST_SETTINGS[:] = [route, config, route_settings(route, config)]
    settings: RouteSettings = _LAST_SETTINGS[2]
    return settings


def _body_only(route: RouteConfig, config: GatewayConfig) -> bool:
    if route.direct_response is not None:
        return False
    phases = route_phases(_settings(route, config))
    return phases.response_body and not phases.response_headers


def _any_body_only(config: GatewayConfig) -> bool:
    if _BODY_ONLY[0] is not config:  # once per (frozen) config object, as ext_proc_enabled
        _BODY_ONLY[:] = [config, ext_proc_enabled(config) and any(_body_only(r, config) for r in config.routes)]
    return bool(_BODY_ONLY[1])


def route_uses_ext_proc(route: RouteConfig, config: GatewayConfig) -> bool:
    return route_phases(route_settings(route, config)).any


def request_buffer_limit(settings: RouteSettings) -> int | None:
    """Envoy's request body buffer limit for a route whose JSON request bodies ext_proc reads: the route's
    max_body_bytes, so that a body it accepts is never refused by a smaller connection limit (the listener's
    per_connection_buffer_limit_bytes, 1 MiB unless set) nor left waiting behind it. Envoy only ever raises
    a stream's limit with it (Route.request_body_buffer_limit, Envoy >= 1.36)."""
    if not route_phases(settings).request_body:
        return None
    limits = settings.transformations or TransformationsConfig()
    return limits.max_body_bytes


_ENABLED: list[Any] = [None, False]
_BODY_ONLY: list[Any] = [None, False]


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


def _cache_bypass(route: RouteConfig, config: GatewayConfig) -> bool:
    """Whether the route says `X-Cache-Status: BYPASS` itself: the gateway caches, but no rule covers this
    route (ext_proc then need not see its responses at all). Routes a rule covers get HIT/MISS/BYPASS from
    ext_proc (ext_proc/session.py)."""
    cache = cache_of(config)
    if cache is None or not cache.enabled or route.direct_response is not None or not ext_proc_enabled(config):
        return False
    return _settings(route, config).cache is None


def _header_option(name: str, value: str, if_absent: bool) -> dict[str, Any]:
    return {"header": {"key": name, "value": value},
            "append_action": "ADD_IF_ABSENT" if if_absent else "OVERWRITE_IF_EXISTS_OR_ADD"}


_SET: list[Any] = [None, []]
# Per route object, its own contribution, under one global transformations section: a change to one route of
# 10,000 must not recompute route_settings for all of them (~200 ms a snapshot). Only the last call's routes.
_PER_ROUTE: list[Any] = [None, {}]


def _names(t: Any) -> set[str]:
    names = set(t.request.rename_headers.values())
    names.update(n for n, spec in t.request.add_headers.items() if not header_spec(spec).if_absent)
    return names


def request_headers_set(config: GatewayConfig) -> list[str]:
    """The request headers this service's rules set for the upstream (rename targets and unconditional adds,
    natively or by the processor), once per (frozen) config object. The kernel removes them from client input
    on arrival: a rename sets its target only when the source came, and a failed processor sets nothing, so
    without that a client's own value would pass as the gateway's. `if_absent` adds keep the client's value
    by design and are left out."""
    if _SET[0] is not config:
        glob = transformations_of(config)
        known: dict[int, tuple[Any, frozenset[str]]] = _PER_ROUTE[1] if _PER_ROUTE[0] is glob else {}
        current: dict[int, tuple[Any, frozenset[str]]] = {}
        names: set[str] = _names(glob) if glob is not None else set()
        for route in config.routes:
            if transformations_of(route) is None:
                continue
            kept = known.get(id(route))
            if kept is None or kept[0] is not route:
                t = route_settings(route, config).transformations
                kept = (route, frozenset(_names(t)) if t is not None else frozenset())
            current[id(route)] = kept
            names.update(kept[1])
        _PER_ROUTE[:] = [glob, current]
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
                # Dynamic metadata the processor may set: only the access log's cache_hit namespace.
                "metadata_options": {"receiving_namespaces": {"untyped": [CACHE_NAMESPACE]},
                                     "forwarding_namespaces": {"untyped": [RESPONSE_NAMESPACE]}},
                "allow_mode_override": True,  # a request may need fewer phases than its route (never more)
                "mutation_rules": {
                    "allow_all_routing": True,  # :path, to add query parameters; the regex forbids the rest
                    "disallow_expression": {"regex": MUTATION_DISALLOW_REGEX},
                    "disallow_is_error": True,
                },
            },
        }

    def http_filters_before(self, config: GatewayConfig) -> list[dict[str, Any]]:
        """Filters placed right before ext_proc's: the response hold of body-only routes."""
        return [response_hold_filter()] if _any_body_only(config) else []

    def http_filters_after(self, config: GatewayConfig) -> list[dict[str, Any]]:
        """Filters placed right after ext_proc's: the response content-type for body-only routes."""
        return [response_metadata_filter()] if _any_body_only(config) else []

    def companion_per_route(self, route: RouteConfig, config: GatewayConfig) -> dict[str, Any]:
        """The response hold, on for body-only routes (their limit is in the route's metadata)."""
        return {LUA_FILTER: HOLD_ON} if _any_body_only(config) and _body_only(route, config) else {}

    def per_route(self, route: RouteConfig | None, config: GatewayConfig) -> dict[str, Any] | None:
        if not ext_proc_enabled(config):
            return None
        phases = route_phases(_settings(route, config)) if route is not None else Phases()
        if route is None or not phases.any:
            return {"@type": PER_ROUTE_TYPE, "disabled": True}
        return {"@type": PER_ROUTE_TYPE, "overrides": {
            "processing_mode": processing_mode(phases),
            "grpc_initial_metadata": [{"key": ROUTE_METADATA, "value": route.name}],
        }}

    def route_fields(self, route: RouteConfig, config: GatewayConfig) -> dict[str, Any]:
        return {}

    def route_options(self, route: RouteConfig, config: GatewayConfig) -> dict[str, Any]:
        """Fields of the Envoy route itself: its request body buffer limit (see request_buffer_limit), and
        the mark that holds a body-only route's response (HOLD_SCRIPT)."""
        if not ext_proc_enabled(config):
            return {}
        out: dict[str, Any] = {}
        limit = request_buffer_limit(_settings(route, config))
        if limit is not None:
            out["request_body_buffer_limit"] = limit
        if _body_only(route, config):
            rules = _settings(route, config).transformations
            assert rules is not None  # a body-only route is one with response body rules
            hold = min(rules.max_body_bytes, config.edge.connection_buffer_bytes)
            out["metadata"] = {"filter_metadata": {LUA_FILTER: {HOLD_KEY: hold}}}
        return out

    def route_headers(self, route: RouteConfig, config: GatewayConfig) -> dict[str, list[Any]]:
        """Static header edits compiled into the Envoy route (applied by the router, after every filter)."""
        native = _native_headers(route, config)
        bypass = _cache_bypass(route, config)
        if native is _NO_HEADERS and not bypass:
            return {}
        out: dict[str, list[Any]] = {}
        if bypass:
            out["response_headers_to_add"] = [_header_option("x-cache-status", "BYPASS", False)]
        if native.request_add:
            out["request_headers_to_add"] = [_header_option(*h) for h in native.request_add]
        if native.request_remove:
            out["request_headers_to_remove"] = list(native.request_remove)
        if native.response_add:
            out.setdefault("response_headers_to_add", []).extend(_header_option(*h) for h in native.response_add)
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
