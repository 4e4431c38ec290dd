"""The rate limits compiled into Envoy's own local_ratelimit filter (`rate_limits.enforcement: local`).

One filter in the HTTP chain (where the rate limit filter would be) holds every bucket and every limit's
descriptor actions (its embedded `rate_limits`; Envoy deprecates taking them from the route), so a bucket is
shared by all routes as the service's counters are. Each action list starts with a gate: a `metadata` action on
the route's own metadata (ROUTE_ENTRY, `skip_if_absent`), which only the routes the limit covers carry
(route_metadata), so a route takes from the buckets the service path would charge on it. Then come the same
actions the service path sends (ratelimit_service/envoy.py). Per descriptor:

  [outrider_limit=per_ip, remote_address=*]                       per_ip: a token bucket (burst, refill rate)
  [outrider_limit=tier, tier=<tier>, user_id=*, outrider_window=<unit>]  per user, tier and window of a plan
  [outrider_limit=tier, tier=<UNKNOWN_TIER>, user_id=*, outrider_window=<unit>]  a tier no plan names
  [outrider_limit=endpoint, endpoint=<path, or prefix + '*'>]      one bucket shared by every caller

A wildcard entry (empty value) gives each distinct value its own bucket, at most max_dynamic_descriptors of
them, least recently used dropped first (Envoy >= 1.34; api/envoy/extensions/common/ratelimit/v3/
ratelimit.proto LocalRateLimitDescriptor, local_rate_limit.proto max_dynamic_descriptors).
"""

from __future__ import annotations

import re
from typing import Any

from ratelimit_service.config import UNIT_SECONDS, RateLimitsConfig, WindowLimit

LOCAL_FILTER = "envoy.filters.http.local_ratelimit"
LOCAL_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
STAT_PREFIX = "outrider_local_ratelimit"
# The route metadata namespace of the gates, and the descriptor entry a gate adds (its kind of limit).
GATE_NAMESPACE = "outrider.local_ratelimit"
GATE_KEY = "outrider_limit"
# The descriptor entry that tells a plan's windows apart (Envoy matches descriptors on their entries, so two
# windows of one tier need one more entry each).
WINDOW_KEY = "outrider_window"
# The descriptor value of a tier no plan names: not a plan name (plan names start with a letter or digit).
UNKNOWN_TIER = "*unknown"
# The tier ext_authz (x-user-tier from the verified token) or jwt_authn (claim_to_headers) put on the request;
# client-sent identity headers are removed on arrival (outrider/envoy_edge.py), so only they set it.
TIER_HEADER = "x-user-tier"
# The bucket of a request no descriptor matches: never empty (uint32 max, refilled each second).
UNLIMITED_BUCKET = {"max_tokens": 4_294_967_295, "tokens_per_fill": 4_294_967_295, "fill_interval": "1s"}
_PERCENT_ALL = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}


# The answer: Envoy's local reply is a text 429 with x-ratelimit-* headers (draft 03 names). A Lua filter right
# before local_ratelimit (so it sees the response after local_ratelimit added them) gives the service path's
# answer instead: RateLimit-Limit / -Remaining / -Reset, and on a local 429 (marked by local_ratelimit's
# response_headers_to_add, which applies to its own 429s only) Retry-After and the JSON body of
# ratelimit_service/service.py rejection_body. (%RESP()% in a header value is not evaluated on a local reply,
# and the custom_response filter is a work-in-progress API: Lua is what is left.)
LUA_FILTER = "outrider.local_ratelimit_answer"
LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
MARK = "x-outrider-local-ratelimited"
_ANSWER_LUA = """
function envoy_on_response(handle)
  local h = handle:headers()
  local limit = h:get("x-ratelimit-limit")
  if limit == nil then return end
  local remaining = h:get("x-ratelimit-remaining")
  local reset = h:get("x-ratelimit-reset")
  h:remove("x-ratelimit-limit")
  h:remove("x-ratelimit-remaining")
  h:remove("x-ratelimit-reset")
  -- No bucket matched (the default one answered): no limit to tell.
  if SHOW and limit ~= "4294967295" then
    h:add("ratelimit-limit", limit)
    h:add("ratelimit-remaining", remaining)
    h:add("ratelimit-reset", reset)
  end
  if h:get("MARK") == nil then return end
  h:remove("MARK")
  local retry = math.max(1, tonumber(reset) or 1)
  h:replace("retry-after", tostring(retry))
  h:replace("content-type", "application/json")
  handle:body(true):setBytes('{"error":"rate_limited","message":"Too many requests; retry later.",'
    .. '"retry_after":' .. retry .. '}')
end
"""


def answer_filter(rl: RateLimitsConfig) -> dict[str, Any]:
    """The Lua filter that shapes local_ratelimit's answers as the service path's (see _ANSWER_LUA)."""
    code = _ANSWER_LUA.replace("SHOW", "true" if rl.response_headers else "false").replace("MARK", MARK)
    return {"name": LUA_FILTER, "typed_config": {"@type": LUA_TYPE, "default_source_code": {"inline_string": code}}}


def off_on_route() -> dict[str, Any]:
    """typed_per_filter_config of a route no limit covers: neither filter runs there. (A per-route
    local_ratelimit config needs a token bucket; disabled, it never takes from it.)"""
    return {
        LOCAL_FILTER: {"@type": LOCAL_TYPE, "stat_prefix": STAT_PREFIX, "token_bucket": UNLIMITED_BUCKET,
                       "filter_enabled": {"default_value": {"numerator": 0, "denominator": "HUNDRED"}}},
        LUA_FILTER: {"@type": LUA_TYPE.replace(".Lua", ".LuaPerRoute"), "disabled": True},
    }


def is_local(rl: RateLimitsConfig | None) -> bool:
    return rl is not None and rl.enforcement == "local"


def bucket(window: WindowLimit) -> dict[str, Any]:
    """A window as a token bucket: `requests_per_unit` tokens, all refilled over one `unit` (Envoy refills
    continuously: one token every unit/requests_per_unit); a token_bucket plan keeps its burst."""
    size = window.burst if window.algorithm == "token_bucket" and window.burst else window.requests_per_unit
    return {"max_tokens": size, "tokens_per_fill": window.requests_per_unit,
            "fill_interval": f"{UNIT_SECONDS[str(window.unit)]}s"}


def _descriptor(kind: str, entries: list[tuple[str, str]], window: WindowLimit) -> dict[str, Any]:
    return {"entries": [{"key": k, "value": v} for k, v in [(GATE_KEY, kind), *entries]],
            "token_bucket": bucket(window)}


def _kind(name: str) -> str:
    """A limit's name (per_ip, tier_authz, tier_jwt, endpoint_<n>) → the gate entry's value."""
    return name if name == "per_ip" else name.split("_")[0]


def route_metadata(names: list[str]) -> dict[str, Any]:
    """The Route's metadata that opens the gates of the limits on it."""
    return {"metadata": {"filter_metadata": {GATE_NAMESPACE: {name: _kind(name) for name in names}}}}


def _gate(name: str) -> dict[str, Any]:
    return {"metadata": {"descriptor_key": GATE_KEY, "source": "ROUTE_ENTRY", "skip_if_absent": True,
                         "metadata_key": {"key": GATE_NAMESPACE, "path": [{"key": name}]}}}


def tier_units(rl: RateLimitsConfig) -> list[str]:
    """Every window unit some plan has, in a stable order (one action list per unit on protected routes)."""
    units = {str(w.unit) for windows in rl.tiers.values() for w in windows if not w.unlimited}
    return sorted(units, key=lambda u: UNIT_SECONDS[u])


def descriptors(rl: RateLimitsConfig) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if rl.per_ip is not None and not rl.per_ip.unlimited:
        out.append(_descriptor("per_ip", [("remote_address", "")], rl.per_ip))
    plans = [(tier, windows) for tier, windows in rl.tiers.items()]
    if rl.unknown_tier is not None:
        plans.append((UNKNOWN_TIER, rl.tiers[rl.unknown_tier]))
    for tier, windows in plans:
        for window in windows:
            if not window.unlimited:
                entries = [("tier", tier), ("user_id", ""), (WINDOW_KEY, str(window.unit))]
                out.append(_descriptor("tier", entries, window))
    for endpoint in rl.endpoints:
        if not endpoint.limit.unlimited:
            out.append(_descriptor("endpoint", [("endpoint", endpoint.value)], endpoint.limit))
    return out


def action_lists(rl: RateLimitsConfig, named: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The filter's `rate_limits`: each limit's actions (by name, as route_limits gives them) behind its gate;
    a tier limit's once per window unit."""
    out: list[dict[str, Any]] = []
    for name, actions in named.items():
        if _kind(name) == "tier":
            tier, user = actions
            out.extend({"actions": [_gate(name), *a["actions"]]} for a in tier_action_lists(rl, tier, user))
        else:
            out.append({"actions": [_gate(name), *actions]})
    return out


def http_filter(rl: RateLimitsConfig, named: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The listener's local_ratelimit filter: every bucket and every limit's actions."""
    return {
        "name": LOCAL_FILTER,
        "typed_config": {
            "@type": LOCAL_TYPE,
            "stat_prefix": STAT_PREFIX,
            "token_bucket": UNLIMITED_BUCKET,
            "filter_enabled": _PERCENT_ALL,
            "filter_enforced": _PERCENT_ALL,
            "descriptors": descriptors(rl),
            "rate_limits": action_lists(rl, named),
            # A request no bucket matches takes nothing (Envoy's default is to take from the default bucket).
            "always_consume_default_token_bucket": False,
            "max_dynamic_descriptors": rl.local_max_dynamic_descriptors,
            # x-ratelimit-limit / -remaining / -reset of the bucket that decided (draft 03 names), renamed by
            # answer_filter; the mark tells it a 429 is this filter's own.
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "response_headers_to_add": [{"header": {"key": MARK, "value": "1"}}],
        },
    }


def _window(unit: str) -> dict[str, Any]:
    return {"generic_key": {"descriptor_key": WINDOW_KEY, "descriptor_value": unit}}


def tier_action_lists(rl: RateLimitsConfig, tier: dict[str, Any], user: dict[str, Any]) -> list[dict[str, Any]]:
    """A protected route's tier descriptors: the service path's (tier, user_id) actions once per window unit,
    and, with unknown_tier, the same for a tier the request's x-user-tier does not name."""
    out = [{"actions": [tier, user, _window(unit)]} for unit in tier_units(rl)]
    if rl.unknown_tier is not None:
        known = "|".join(re.escape(t) for t in rl.tiers)
        unknown = {"header_value_match": {
            "descriptor_key": "tier", "descriptor_value": UNKNOWN_TIER, "expect_match": False,
            # An absent header is the default tier (the metadata action's default): not unknown.
            "headers": [{"name": TIER_HEADER, "treat_missing_header_as_empty": True,
                         "string_match": {"safe_regex": {"regex": f"^({known}|)$"}}}],
        }}
        units = sorted({str(w.unit) for w in rl.tiers[rl.unknown_tier] if not w.unlimited},
                       key=lambda u: UNIT_SECONDS[u])
        out.extend({"actions": [unknown, user, _window(unit)]} for unit in units)
    return out
