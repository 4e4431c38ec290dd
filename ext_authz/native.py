"""Native enforcement: a route's JWT check and RBAC compiled into Envoy's jwt_authn and rbac filters.

No I/O but reading a provider's JWKS file (its keys are inlined). `enforcement: native` on a protected
route (or `auth.enforcement: native` for every protected route) has Envoy verify the token
(`envoy.filters.http.jwt_authn`), copy the identity into the request headers (`claim_to_headers`, the
default tier by the route, `x-user-roles` by a Lua line) and its payload into dynamic metadata
(`payload_in_metadata`), and apply the route's grants (`envoy.filters.http.rbac` on that metadata);
ext_authz is not asked on the route. What those
filters cannot evaluate as ext_authz does is refused by `why_not` (so by `outrider validate`), naming the
reason: a native route never silently checks less than its Python twin, except for the differences the
README lists under "Native enforcement" (mode differences).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import RootModel

from ext_authz.config import AuthConfig, JwtProviderConfig, RbacConfig, auth_of, rbac_of
from ext_authz.jwks import JwksError, parse_jwks
from outrider.addresses import is_ip_address
from outrider.config.errors import Problem
from outrider.config.extensions import section
from outrider.config.model import GatewayConfig, RouteConfig
from outrider.envoy_contribution import load_assignment, verified_tls_socket

Enforcement = Literal["python", "native"]
NATIVE: Enforcement = "native"
PYTHON: Enforcement = "python"
JWT_AUTHN = "envoy.filters.http.jwt_authn"
RBAC = "envoy.filters.http.rbac"
# jwt_authn files the verified payload under its own namespace, at this key (ratelimit_service/envoy.py
# reads the same path by name: services never import each other).
PAYLOAD_KEY = "outrider_payload"
REQUIREMENT = "outrider"
JWT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
JWT_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
# A name of its own (not the extension's): ext_proc has a Lua filter too, and per-route configs go by name.
LUA = "outrider.native_roles"
LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
LUA_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
# ext_authz/rbac.py's method → action map, as Envoy sees methods (case-sensitive, RFC 9110 §9.1).
_ACTION_METHODS: Mapping[str, tuple[str, ...]] = {
    "read": ("GET", "HEAD"), "write": ("POST", "PUT", "PATCH"), "delete": ("DELETE",),
}
_ALL_METHODS = tuple(m for methods in _ACTION_METHODS.values() for m in methods)
# The public members of a JWK that jwt_authn reads; anything else (key_ops, comments) is left out.
_JWK_MEMBERS = ("kty", "kid", "crv", "n", "e", "x", "y")


class RouteEnforcement(RootModel[Enforcement]):
    """A route's `enforcement: python | native` (absent: the gateway's `auth.enforcement`)."""


def enforcement_of(route: RouteConfig, config: GatewayConfig) -> Enforcement:
    """How a route's token and grants are checked; public routes and direct responses check nothing."""
    own = section(route, "enforcement", RouteEnforcement)
    if own is not None:
        return own.root
    return auth_of(config).enforcement


def is_native(route: RouteConfig | None, config: GatewayConfig) -> bool:
    return (route is not None and route.resource is not None and route.upstream is not None
            and enforcement_of(route, config) == NATIVE)


_ANY_NATIVE: list[Any] = [None, False]


def any_native(config: GatewayConfig) -> bool:
    """Whether some route is native (then the filters are in the chain), once per (frozen) config object: the
    per-route hooks ask it for each of 10,000 routes."""
    if _ANY_NATIVE[0] is not config:
        _ANY_NATIVE[:] = [config, any(is_native(route, config) for route in config.routes)]
    return bool(_ANY_NATIVE[1])


# --- why not --------------------------------------------------------------------------------------------

def _provider_reasons(provider: JwtProviderConfig) -> Iterator[str]:
    if "HS256" in provider.algorithms:
        yield "HS256: its shared secret would have to be written into Envoy's config (keep this route python)"
    for name in ("tier_claim", "email_claim"):
        claim = getattr(provider, name)
        if "." in claim:
            yield (f"{name} '{claim}': jwt_authn's claim_to_headers reads a dotted name as a nested claim, "
                   "ext_authz as a top-level one")
    if provider.jwks_file is not None and provider.jwks_file.is_file():
        try:
            _inline_jwks(provider)
        except ValueError as exc:
            yield str(exc)


def _shared_reasons(auth: AuthConfig) -> Iterator[str]:
    if auth.leeway_s != int(auth.leeway_s):
        yield f"auth.leeway_s {auth.leeway_s}: jwt_authn's clock_skew_seconds is whole seconds"
    first = auth.providers[0]
    for name in ("roles_claim", "tier_claim", "default_tier"):
        if any(getattr(p, name) != getattr(first, name) for p in auth.providers):
            yield (f"providers differ in {name}: the route's RBAC and rate-limit descriptors read one claim "
                   "of the verified payload whichever provider signed it")


def why_not(config: GatewayConfig) -> list[Problem]:
    """Every native route that native filters cannot enforce as ext_authz does, with the reasons."""
    native = [index for index, route in enumerate(config.routes) if is_native(route, config)]
    if not native:
        return []
    auth = auth_of(config)
    reasons = list(_shared_reasons(auth))
    for provider in auth.providers:
        reasons.extend(f"provider '{provider.name}': {reason}" for reason in _provider_reasons(provider))
    if not reasons:
        return []
    message = "enforcement: native cannot express this route's check: " + "; ".join(reasons)
    return [(("routes", index, "enforcement"), message) for index in native]


# --- compile --------------------------------------------------------------------------------------------

def _inline_jwks(provider: JwtProviderConfig) -> str:
    """The provider's JWKS file as jwt_authn gets it: each key pinned to the one algorithm it may verify.

    jwt_authn has no per-provider algorithm allow-list; it lets a key verify any algorithm of its type unless
    the key names its `alg`. So every key is given the single algorithm of its type that the provider allows
    (a key no allowed algorithm fits is left out; a key that two allowed algorithms fit is refused).
    """
    assert provider.jwks_file is not None
    raw = json.loads(Path(provider.jwks_file).read_text())
    try:
        keys = parse_jwks(raw)
    except JwksError as exc:
        raise ValueError(f"jwks_file: {exc}") from None
    out: list[dict[str, Any]] = []
    seen: set[str | None] = set()
    for entry in raw.get("keys", []):
        kid = entry.get("kid") if isinstance(entry, Mapping) else None
        vkey = keys.keys.get(kid)
        if vkey is None or kid in seen:
            continue  # skipped by ext_authz too (unusable, or a duplicate kid)
        seen.add(kid)
        allowed = sorted(vkey.algorithms & set(provider.algorithms))
        if not allowed:
            continue
        if len(allowed) > 1:
            raise ValueError(f"jwks_file key {kid!r} may verify {allowed}: jwt_authn cannot restrict it to the "
                             "allowed algorithms (give the key an `alg`)")
        out.append({**{m: entry[m] for m in _JWK_MEMBERS if m in entry}, "alg": allowed[0]})
    return json.dumps({"keys": out}, sort_keys=True, separators=(",", ":"))


def jwks_cluster_name(provider: JwtProviderConfig) -> str:
    return f"outrider_jwks_{provider.name}"


def _keys(provider: JwtProviderConfig) -> dict[str, Any]:
    """local_jwks (the file, inlined and pinned) or remote_jwks (the URL, through its own cluster)."""
    if provider.jwks_url is None:
        return {"local_jwks": {"inline_string": _inline_jwks(provider)}}
    return {"remote_jwks": {
        "http_uri": {"uri": provider.jwks_url, "cluster": jwks_cluster_name(provider), "timeout": "5s"},
        "cache_duration": f"{provider.jwks_refresh_s:.3f}s",
        # Fetched on the main thread before the listener takes requests (as ext_authz is ready only with keys).
        "async_fetch": {},
        "retry_policy": {"num_retries": 3},
    }}


def jwks_clusters(config: GatewayConfig) -> list[dict[str, Any]]:
    """One cluster per provider with a jwks_url: its host, over TLS checked against the system CAs (by name)
    unless the URL is plain http:// (allow_insecure, DEVELOPMENT ONLY)."""
    clusters = []
    for provider in auth_of(config).providers:
        if provider.jwks_url is None:
            continue
        url = urlsplit(provider.jwks_url)
        host = url.hostname or ""
        tls = url.scheme == "https"
        name = jwks_cluster_name(provider)
        cluster: dict[str, Any] = {
            "name": name,
            "type": "STATIC" if is_ip_address(host) else "STRICT_DNS",
            "connect_timeout": "2s",
            "load_assignment": load_assignment(name, [(host, url.port or (443 if tls else 80), 1)]),
        }
        if tls:
            cluster["transport_socket"] = verified_tls_socket(host)
        clusters.append(cluster)
    return clusters


def _provider(provider: JwtProviderConfig, auth: AuthConfig) -> dict[str, Any]:
    leeway = int(auth.leeway_s)
    return {
        "issuer": provider.issuer,
        "audiences": list(provider.audiences),
        # ext_authz refuses a token without a non-empty string `sub` (it is the caller's id).
        "subjects": {"safe_regex": {"regex": ".+"}},
        "require_expiration": True,
        # jwt_authn bounds exp - now (ext_authz: exp - iat when iat is given; README "Native enforcement").
        "max_lifetime": f"{provider.max_lifetime_s + leeway:.3f}s",
        "clock_skew_seconds": leeway,
        **_keys(provider),
        # Only `Authorization: Bearer`, as ext_authz: never the access_token query parameter (the default).
        "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
        # The upstream sees the Authorization header on protected routes in python mode too.
        "forward": True,
        "payload_in_metadata": PAYLOAD_KEY,
        # Verified tokens kept (their exp and nbf are checked again on each hit), as ext_authz's token cache.
        **({"jwt_cache_config": {"jwt_cache_size": auth.token_cache_entries}} if auth.token_cache_entries else {}),
        "claim_to_headers": [
            {"header_name": "x-user-id", "claim_name": "sub"},
            {"header_name": "x-user-email", "claim_name": provider.email_claim},
            {"header_name": "x-user-tier", "claim_name": provider.tier_claim},
        ],
    }


def jwt_authn_filter(config: GatewayConfig) -> dict[str, Any]:
    """The jwt_authn filter: every provider, one requirement (any of them); routes opt in per route."""
    auth = auth_of(config)
    names = [p.name for p in auth.providers]
    requirement: dict[str, Any] = (
        {"provider_name": names[0]} if len(names) == 1
        else {"requires_any": {"requirements": [{"provider_name": n} for n in names]}})
    return {
        "name": JWT_AUTHN,
        "typed_config": {
            "@type": JWT_TYPE,
            "providers": {p.name: _provider(p, auth) for p in auth.providers},
            "requirement_map": {REQUIREMENT: requirement},
        },
    }


def jwt_per_route(route: RouteConfig | None, config: GatewayConfig) -> dict[str, Any]:
    if is_native(route, config):
        return {"@type": JWT_PER_ROUTE_TYPE, "requirement_name": REQUIREMENT}
    return {"@type": JWT_PER_ROUTE_TYPE, "disabled": True}


def rbac_filter() -> dict[str, Any]:
    """The rbac filter without rules of its own: it enforces only where a native route gives a policy."""
    return {"name": RBAC, "typed_config": {"@type": RBAC_TYPE}}


def _methods(actions: Sequence[str]) -> list[str]:
    if "*" in actions:
        return list(_ALL_METHODS)
    return [m for action in _ACTION_METHODS for m in _ACTION_METHODS[action] if action in actions]


def _has_role(roles_claim: str, role: str) -> dict[str, Any]:
    """The verified payload's roles claim holds `role`: a list containing it, or the string itself (as
    ext_authz reads a string claim as one role). RBAC's metadata matcher: ValueMatcher.list_match."""
    path = [{"key": PAYLOAD_KEY}, {"key": roles_claim}]
    exact = {"string_match": {"exact": role}}
    return {"or_ids": {"ids": [
        {"sourced_metadata": {"metadata_matcher": {"filter": JWT_AUTHN, "path": path, "value": value}}}
        for value in ({"list_match": {"one_of": exact}}, exact)
    ]}}


def rbac_policies(resource: str, rbac: RbacConfig, roles_claim: str) -> dict[str, Any]:
    """One ALLOW policy per role granting something on `resource`; no policy matches: 403."""
    policies: dict[str, Any] = {}
    for role, grants in sorted(rbac.roles.items()):
        actions = sorted({a for g in grants if g.resource in (resource, "*") for a in g.actions})
        methods = _methods(actions)
        if not methods:
            continue
        policies[role] = {
            "permissions": [{"or_rules": {"rules": [
                {"header": {"name": ":method", "string_match": {"exact": m}}} for m in methods]}}],
            "principals": [_has_role(roles_claim, role)],
        }
    return {"action": "ALLOW", "policies": policies}


def rbac_per_route(route: RouteConfig | None, config: GatewayConfig) -> dict[str, Any] | None:
    if route is None or not is_native(route, config):
        return None
    assert route.resource is not None
    roles_claim = auth_of(config).providers[0].roles_claim
    return {"@type": RBAC_PER_ROUTE_TYPE,
            "rbac": {"rules": rbac_policies(route.resource, rbac_of(config), roles_claim)}}


def _roles_lua(roles_claim: str) -> str:
    # claim_to_headers copies a list claim as base64 JSON, %DYNAMIC_METADATA% prints it as JSON (["a","b"]):
    # ext_authz sends the roles joined with commas (a string claim as is, none as an empty value), so a few
    # lines do it. Envoy's CEL has no join() nor string concatenation: one %CEL% per element and separator
    # did the same at ~4x this filter's Envoy CPU per request (+150 µs against +35 µs, side by side on one
    # Envoy on this 2-core box).
    return f"""
function envoy_on_request(handle)
  local md = handle:streamInfo():dynamicMetadata():get("{JWT_AUTHN}")
  local payload = md and md["{PAYLOAD_KEY}"]
  local roles = payload and payload[{json.dumps(roles_claim)}]
  local value = ""
  if type(roles) == "table" then value = table.concat(roles, ",") elseif type(roles) == "string" then value = roles end
  handle:headers():replace("x-user-roles", value)
end
"""


def roles_filter(config: GatewayConfig) -> dict[str, Any]:
    """A Lua filter setting x-user-roles from the verified payload; switched off but on native routes."""
    roles_claim = auth_of(config).providers[0].roles_claim
    return {"name": LUA, "typed_config": {
        "@type": LUA_TYPE, "default_source_code": {"inline_string": _roles_lua(roles_claim)}}}


def roles_per_route(route: RouteConfig | None, config: GatewayConfig) -> dict[str, Any] | None:
    return None if is_native(route, config) else {"@type": LUA_PER_ROUTE_TYPE, "disabled": True}


def route_headers(route: RouteConfig, config: GatewayConfig) -> dict[str, list[dict[str, Any]]]:
    """A native route's identity header jwt_authn cannot set: the default tier (the roles: roles_filter)."""
    if not is_native(route, config):
        return {}
    provider = auth_of(config).providers[0]
    return {"request_headers_to_add": [
        # claim_to_headers set it when the token has a tier; ext_authz sends the default otherwise.
        {"header": {"key": "x-user-tier", "value": provider.default_tier}, "append_action": "ADD_IF_ABSENT"},
    ]}
