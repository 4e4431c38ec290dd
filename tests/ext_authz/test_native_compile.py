"""The native compiler (ext_authz/native.py): our provider/RBAC config → jwt_authn, rbac and Lua settings,
the rate limit descriptors from the verified payload, and `validate` refusing what it cannot express.

Field meanings: envoyproxy/envoy api/envoy/extensions/filters/http/jwt_authn/v3/config.proto (JwtProvider,
PerRouteConfig), api/envoy/config/rbac/v3/rbac.proto (Principal.sourced_metadata), api/envoy/type/matcher/v3/
value.proto (ListMatcher.one_of: a list value containing a match).
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_authz import native
from outrider.config.errors import ConfigError
from outrider.config.loader import load_config_data
from outrider.envoy_config import compile_bootstrap, compile_http_filters, compile_route
from tests.harness import EXAMPLE_CONFIG, example_config_dict

ROOT = Path(__file__).resolve().parents[2]


def load(changes: dict[str, Any] | None = None, native_routes: tuple[str, ...] = ("users",),
         provider: dict[str, Any] | None = None) -> Any:
    data = example_config_dict()
    for route in data["routes"]:
        if route["name"] in native_routes:
            route["enforcement"] = "native"
    data["auth"]["providers"][0].update(provider or {})
    data["auth"].update(changes or {})
    return load_config_data(data, base_dir=EXAMPLE_CONFIG.parent)


def route(config: Any, name: str) -> Any:
    return next(r for r in config.routes if r.name == name)


def filter_names(config: Any) -> list[str]:
    return [f["name"] for f in compile_http_filters(config)]


def test_python_by_default_adds_no_filter() -> None:
    config = load(native_routes=())
    assert not {native.JWT_AUTHN, native.RBAC, native.LUA} & set(filter_names(config))
    compiled = compile_route(route(config, "users"), config)
    assert native.JWT_AUTHN not in compiled["typed_per_filter_config"]


def test_native_filters_sit_before_ext_authz_and_the_rate_limiter() -> None:
    names = filter_names(load())
    assert names.index(native.JWT_AUTHN) < names.index(native.RBAC) < names.index(native.LUA) \
        < names.index("envoy.filters.http.ext_authz") < names.index("envoy.filters.http.ratelimit")


def test_native_route_switches_ext_authz_off_and_requires_the_token() -> None:
    config = load()
    per_filter = compile_route(route(config, "users"), config)["typed_per_filter_config"]
    assert per_filter["envoy.filters.http.ext_authz"]["disabled"] is True
    assert per_filter[native.JWT_AUTHN] == {"@type": native.JWT_PER_ROUTE_TYPE, "requirement_name": "outrider"}
    assert native.LUA not in per_filter  # the roles line runs here
    assert per_filter[native.RBAC]["rbac"]["rules"]["action"] == "ALLOW"
    # A python route: ext_authz asked, jwt_authn and the Lua line off, no RBAC policy (the filter has none).
    other = compile_route(route(config, "files"), config)["typed_per_filter_config"]
    assert "check_settings" in other["envoy.filters.http.ext_authz"]
    assert other[native.JWT_AUTHN]["disabled"] is True and other[native.LUA]["disabled"] is True
    assert native.RBAC not in other


def test_provider_compiles_to_the_same_checks() -> None:
    config = load({"leeway_s": 17})
    provider = compile_http_filters(config)[2]["typed_config"]["providers"]["dev"]
    assert provider["issuer"] == "https://auth.outrider.dev"
    assert provider["audiences"] == ["outrider"]
    assert provider["clock_skew_seconds"] == 17
    assert provider["require_expiration"] is True
    assert provider["max_lifetime"] == "86417.000s"  # max_lifetime_s + leeway, as ext_authz without iat
    assert provider["subjects"] == {"safe_regex": {"regex": ".+"}}
    # Only `Authorization: Bearer`: from_headers replaces the default locations (no access_token parameter).
    assert provider["from_headers"] == [{"name": "Authorization", "value_prefix": "Bearer "}]
    assert provider["forward"] is True
    assert provider["jwt_cache_config"] == {"jwt_cache_size": 10_000}  # auth.token_cache_entries
    assert {c["header_name"]: c["claim_name"] for c in provider["claim_to_headers"]} == {
        "x-user-id": "sub", "x-user-email": "email", "x-user-tier": "tier"}


def test_every_key_is_pinned_to_the_one_allowed_algorithm() -> None:
    provider = compile_http_filters(load())[2]["typed_config"]["providers"]["dev"]
    keys = json.loads(provider["local_jwks"]["inline_string"])["keys"]
    assert keys and all(k["kty"] == "RSA" and k["alg"] == "RS256" for k in keys)
    assert all(set(k) <= {"kty", "kid", "n", "e", "crv", "x", "y", "alg"} for k in keys)
    # An algorithm list no key fits leaves no key: nothing verifies (as ext_authz).
    none_fit = compile_http_filters(load(provider={"algorithms": ["ES256"]}))[2]["typed_config"]
    assert json.loads(none_fit["providers"]["dev"]["local_jwks"]["inline_string"]) == {"keys": []}


def test_rbac_policy_is_the_grants_by_method() -> None:
    config = load()
    rules = compile_route(route(config, "users"), config)["typed_per_filter_config"][native.RBAC]["rbac"]["rules"]
    methods = {role: [r["header"]["string_match"]["exact"] for r in p["permissions"][0]["or_rules"]["rules"]]
               for role, p in rules["policies"].items()}
    assert methods == {"admin": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
                       "user": ["GET", "HEAD", "POST", "PUT", "PATCH"]}  # guest: nothing on profile
    ids = rules["policies"]["user"]["principals"][0]["or_ids"]["ids"]
    matchers = [i["sourced_metadata"]["metadata_matcher"] for i in ids]
    assert all(m["filter"] == native.JWT_AUTHN for m in matchers)
    assert all(m["path"] == [{"key": native.PAYLOAD_KEY}, {"key": "roles"}] for m in matchers)
    # A list claim containing the role, or the string claim itself (ext_authz reads it as one role).
    assert [m["value"] for m in matchers] == [{"list_match": {"one_of": {"string_match": {"exact": "user"}}}},
                                              {"string_match": {"exact": "user"}}]


def test_default_tier_header_and_roles_line() -> None:
    config = load(provider={"default_tier": "bronze", "roles_claim": "groups"})
    compiled = compile_route(route(config, "users"), config)
    assert {"header": {"key": "x-user-tier", "value": "bronze"}, "append_action": "ADD_IF_ABSENT"} \
        in compiled["request_headers_to_add"]
    lua = compile_http_filters(config)[4]["typed_config"]["default_source_code"]["inline_string"]
    assert 'payload["groups"]' in lua and 'table.concat(roles, ",")' in lua


def test_rate_limit_descriptors_come_from_the_verified_payload() -> None:
    config = load(provider={"tier_claim": "plan", "default_tier": "free"})
    actions = compile_route(route(config, "users"), config)["route"]["rate_limits"]
    tier_user = next(a["actions"] for a in actions if a["actions"][0].get("metadata"))
    assert [a["metadata"]["metadata_key"] for a in tier_user] == [
        {"key": native.JWT_AUTHN, "path": [{"key": native.PAYLOAD_KEY}, {"key": "plan"}]},
        {"key": native.JWT_AUTHN, "path": [{"key": native.PAYLOAD_KEY}, {"key": "sub"}]}]
    assert tier_user[0]["metadata"]["default_value"] == "free"
    python = compile_route(route(config, "files"), config)["route"]["rate_limits"]
    assert any(a["actions"][0].get("metadata", {}).get("metadata_key", {}).get("key")
               == "envoy.filters.http.ext_authz" for a in python)


def test_gateway_default_with_a_python_route() -> None:
    data = example_config_dict()
    data["auth"]["enforcement"] = "native"
    next(r for r in data["routes"] if r["name"] == "files")["enforcement"] = "python"
    config = load_config_data(data, base_dir=EXAMPLE_CONFIG.parent)
    assert native.is_native(route(config, "users"), config)
    assert not native.is_native(route(config, "files"), config)
    assert not native.is_native(route(config, "public"), config)  # public: nothing to enforce


@pytest.mark.parametrize(("changes", "provider", "reason"), [
    ({"leeway_s": 2.5}, None, "clock_skew_seconds is whole seconds"),
    (None, {"tier_claim": "plan.tier"}, "reads a dotted name as a nested claim"),
])
def test_validate_refuses_what_native_cannot_express(changes: dict[str, Any] | None,
                                                      provider: dict[str, Any] | None, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(changes, provider=provider)
    assert "enforcement: native cannot express" in str(raised.value) and reason in str(raised.value)
    load(changes, native_routes=(), provider=provider)  # the same settings are fine in python mode


def test_jwks_url_becomes_remote_jwks_through_its_own_cluster() -> None:
    config = load(provider={"jwks_file": None, "jwks_url": "https://keys.example:8443/jwks.json",
                            "jwks_refresh_s": 120})
    provider = compile_http_filters(config)[2]["typed_config"]["providers"]["dev"]
    assert "local_jwks" not in provider
    remote = provider["remote_jwks"]
    assert remote["http_uri"] == {"uri": "https://keys.example:8443/jwks.json", "cluster": "outrider_jwks_dev",
                                  "timeout": "5s"}
    assert remote["cache_duration"] == "120.000s" and remote["async_fetch"] == {}
    cluster = next(c for c in compile_bootstrap(config)["static_resources"]["clusters"]
                   if c["name"] == "outrider_jwks_dev")
    assert cluster["type"] == "STRICT_DNS"
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert endpoint == {"socket_address": {"address": "keys.example", "port_value": 8443}}
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == "keys.example"
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "keys.example"}}]
    # No native route: no JWKS cluster either.
    assert not any(c["name"].startswith("outrider_jwks_") for c in compile_bootstrap(load(
        native_routes=(), provider={"jwks_file": None, "jwks_url": "https://keys.example/jwks.json"})
    )["static_resources"]["clusters"])


def test_refuses_a_key_two_allowed_algorithms_fit(tmp_path: Path) -> None:
    jwks = json.loads((EXAMPLE_CONFIG.parent / "keys" / "jwks.json").read_text())
    for key in jwks["keys"]:
        key.pop("alg", None)  # an RSA key without `alg`: RS256 and PS256 both fit it
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    provider = {"algorithms": ["RS256", "PS256"], "jwks_file": str(tmp_path / "jwks.json")}
    with pytest.raises(ConfigError, match="jwt_authn cannot restrict it to the allowed algorithms"):
        load(provider=provider)
    load(provider={**provider, "algorithms": ["RS256"]})  # one fits: the key is pinned to it


def test_refuses_hs256_and_providers_that_disagree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATIVE_TEST_SECRET", "s" * 40)
    with pytest.raises(ConfigError, match="HS256: its shared secret"):
        load(provider={"algorithms": ["RS256", "HS256"], "hs256_secret_env": "NATIVE_TEST_SECRET"})
    data = example_config_dict()
    data["routes"][2]["enforcement"] = "native"
    second = copy.deepcopy(data["auth"]["providers"][0])
    second.update(name="other", issuer="https://other.example", roles_claim="groups")
    data["auth"]["providers"].append(second)
    with pytest.raises(ConfigError, match="providers differ in roles_claim"):
        load_config_data(data, base_dir=EXAMPLE_CONFIG.parent)


@pytest.mark.parametrize("remote", [False, True])
def test_envoy_accepts_the_compiled_bootstrap(tmp_path: Path, remote: bool) -> None:
    data = example_config_dict()
    data["auth"]["enforcement"] = "native"
    if remote:
        data["auth"]["providers"][0].pop("jwks_file")
        data["auth"]["providers"][0]["jwks_url"] = "https://keys.example/jwks.json"
    bootstrap = compile_bootstrap(load_config_data(data, base_dir=EXAMPLE_CONFIG.parent))
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    envoy = ROOT / ".venv" / "bin" / "envoy"
    result = subprocess.run([str(envoy), "--mode", "validate", "-c", str(path), "-l", "error"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("remote", [False, True])
def test_the_control_plane_encodes_native_routes_as_json_format_does(remote: bool) -> None:
    """xds_server's fast encoder (xds_server/fast_encode.py) on the new filters' settings: same bytes."""
    from tests.xds.test_fast_encode import assert_same_bytes, resources_of

    data = example_config_dict()
    data["auth"]["enforcement"] = "native"
    if remote:
        data["auth"]["providers"][0].pop("jwks_file")
        data["auth"]["providers"][0]["jwks_url"] = "https://keys.example/jwks.json"
    next(r for r in data["routes"] if r["name"] == "files")["enforcement"] = "python"
    for resource, message in resources_of(load_config_data(data, base_dir=EXAMPLE_CONFIG.parent)):
        assert_same_bytes(resource, message)
