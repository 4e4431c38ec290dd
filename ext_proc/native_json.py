"""The response JSON policy done in Envoy's Lua (ext_proc/lua/json_policy.lua): its source, and a route's params."""

from __future__ import annotations

import json
import math
from functools import cache
from importlib.resources import files
from typing import Any

from ext_proc.config import (
    RESPONSE_VARS,
    RouteSettings,
    cache_of,
    native_headers,
    parse_template,
    processor_header_adds,
)
from outrider.config.model import GatewayConfig

# Where the request side (nreq's script) records, per request, what the response side reads: the request's
# x-request-id as ext_proc would have seen it (ext_proc/session.py error_response puts it in the 502 body).
NAMESPACE = "outrider.native_policy"
REQUEST_ID_KEY = "request_id"
# The only template variable the Lua renders: `${now()}` (ext_proc/templates.py iso_time, from the
# handle's clock). The others need the request (client_ip, request_id, response_time_ms) or a generator
# (uuid()): such a route stays with ext_proc.
_LUA_VARS = frozenset({"now()"})

# ext_proc/session.py's branches for a response whose only work is the JSON body policy, and the Lua's
# (outrider_json_response) for each; tests/ext_proc/test_native_json_e2e.py compares both through Envoy.
# - local reply of an earlier filter (ext_authz, rate limit): untouched / the Lua never runs (the request
#   never reached it, so it was never marked native).
# - no body (headers end the stream, HEAD, 204): untouched / body() gives nil.
# - content type not JSON (jsonbody.is_json; missing counts as not JSON): untouched / the same test on the
#   response's content-type header.
# - declared length above max_body_bytes (or above what Envoy can hold: BUFFERED_PARTIAL gives Python a
#   cut body): oversize_body pass → untouched, reject → 502 / decided from content-length before reading.
# - body of unknown length (chunked): transformed when it fits, else (cut at Envoy's buffer, or above
#   max_body_bytes) untouched with pass / 502 with reject / pass: chunks collected and cleared as they go
#   by, let through past the limit (outrider_json_stream); reject: read with body(), then decided.
# - empty body: untouched / the same.
# - a body jsonbody.parse(strict=False) refuses: 502 {"error":"bad_gateway","request_id":...} (content-type
#   only, plus the route's own response headers Envoy adds to a local reply) / the same status, headers and
#   bytes (the upstream's other headers removed; respond() is "only valid in the request flow").
# - transformed: remove_names, set_field per added field, dump() / the same bytes (the corpus test).
# - the cache (lookup, store, invalidate, x-cache-status MISS/HIT): routes with a cache rule are not native.
# Known differences: framing (a declared-length answer keeps a content-length on the native path;
# ext_proc's goes out chunked: Envoy drops content-length in BUFFERED_PARTIAL); on a reject route, a chunked
# JSON body larger than Envoy's buffer is Envoy's own 500 (body() cannot hold it) where ext_proc answers 502;
# a refused chunked body on a pass route is a 200 with an empty body (the headers went out first; ext_proc
# resets the stream then); a refused declared-length body is a clean 502 on both; documents nested deeper
# than ~960 with a syntax error after that depth (Python's recursion limit depends on its stack depth);
# several content-type headers (header_to_metadata takes one, the Lua reads them joined with ",").


@cache
def json_policy_lua() -> str:
    """Lua source defining `outrider_json_response(handle, p)` (and `outrider_json_transform`), no global."""
    return files("ext_proc").joinpath("lua/json_policy.lua").read_text(encoding="utf-8")


def _field_value(value: Any) -> dict[str, Any] | None:
    """One add_json_fields value as the Lua renders it (transforms._field_rules), None if it cannot."""
    if isinstance(value, str):
        if value.startswith("$") and not value.startswith("${"):
            return None  # a JSONPath selection of the original document: not ported
        parts = []
        for kind, part in parse_template(value, RESPONSE_VARS):
            if kind == "var" and part not in _LUA_VARS:
                return None
            parts.append({"text": part} if kind == "text" else {"var": part})
        return {"parts": parts}
    if isinstance(value, float) and not math.isfinite(value):
        return None  # json.dumps writes NaN/Infinity, which is no JSON: left to ext_proc as it is
    # int/float/bool/None: the text json.dumps writes (the Lua keeps integers as text, floats by repr)
    return {"json": json.dumps(value)}


def response_params(settings: RouteSettings, config: GatewayConfig) -> dict[str, Any] | None:
    """The route's response params for the Lua (filter_metadata["outrider.native_policy"]["response"]),
    or None when some of its response work is not done natively exactly as ext_proc does it."""
    if settings.cache is not None:
        return None  # the cache stores what ext_proc transformed: ext_proc's job
    t = settings.transformations
    if t is None:
        return {"remove": [], "add": [], "max_body_bytes": 0, "hold_bytes": 0, "oversize_reject": False,
                "namespace": NAMESPACE, "keep_headers": []}
    resp = t.response
    if processor_header_adds(resp.add_headers, RESPONSE_VARS):
        return None  # a response header only ext_proc renders
    if any(name.startswith("$") for name in resp.remove_json_fields):
        return None  # JSONPath removal: not ported
    add = []
    for target, value in resp.add_json_fields.items():
        rendered = _field_value(value)
        if rendered is None:
            return None
        add.append({"path": target.split("."), **rendered})
    return {
        # A plain name is removed at any depth (jsonbody.remove_names); duplicates mean nothing in a set.
        "remove": list(dict.fromkeys(resp.remove_json_fields)),
        "add": add,
        "max_body_bytes": t.max_body_bytes,
        # What Envoy can hold of a response (ext_proc/envoy.py route_options: the hold of body-only routes):
        # a larger one reaches Python cut short, so it is never transformed there either.
        "hold_bytes": min(t.max_body_bytes, config.edge.connection_buffer_bytes),
        "oversize_reject": t.oversize_body == "reject",
        "namespace": NAMESPACE,
        "keep_headers": _route_response_headers(settings, config),
    }


def _route_response_headers(settings: RouteSettings, config: GatewayConfig) -> list[str]:
    """The headers the route itself adds to responses (ext_proc/envoy.py route_headers): Envoy adds them to
    ext_proc's 502 (a local reply) too, so the Lua's refusal keeps them and drops the upstream's others."""
    names = [name for name, _, _ in native_headers(settings.transformations).response_add]
    cache = cache_of(config)
    if cache is not None and cache.enabled and settings.cache is None:
        names.append("x-cache-status")  # BYPASS: the gateway caches, no rule covers this route
    return list(dict.fromkeys(names))
