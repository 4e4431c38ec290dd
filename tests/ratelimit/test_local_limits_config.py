"""`rate_limits.enforcement: local`: what `outrider validate` refuses (file, line, field, reason) and what the
compiled Envoy config holds instead of the rate limit filter (no service: no filter, cluster nor process).

The buckets follow api/envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto and
api/envoy/extensions/common/ratelimit/v3/ratelimit.proto (LocalRateLimitDescriptor: entries + token_bucket;
an empty entry value is a wildcard, one bucket per value, Envoy >= 1.34).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from outrider.config import ConfigError, load_config
from outrider.envoy_config import compile_bootstrap, compile_route
from outrider.supervisor import plan_processes
from ratelimit_service.local_limits import GATE_NAMESPACE, LOCAL_FILTER, LUA_FILTER, UNKNOWN_TIER, WINDOW_KEY
from tests.harness import example_config_dict, with_free_ports, write_config


def _local() -> dict[str, Any]:
    data = with_free_ports(example_config_dict())
    rl = data["rate_limits"]
    rl["enforcement"] = "local"
    rl["per_ip"].pop("ban")
    rl["per_ip"].pop("new_connections_per_second")
    return data


# (change to the valid local config, the field reported, a part of its reason)
REFUSED = [
    (lambda rl, d: rl.update(redis={"url": "redis://127.0.0.1:1/0"}), "rate_limits.redis", "not in a store"),
    (lambda rl, d: rl.update(files=["limits.yaml"]), "rate_limits.files", "descriptor files"),
    (lambda rl, d: rl.update(shadow_mode=True), "rate_limits.shadow_mode", "no shadow answer"),
    (lambda rl, d: rl["per_ip"].update(ban={"after_requests": 10}), "rate_limits.per_ip.ban", "automatic ban"),
    (lambda rl, d: rl["per_ip"].update(new_connections_per_second=5),
     "rate_limits.per_ip.new_connections_per_second", "not per address"),
    (lambda rl, d: rl["tiers"]["free"][0].update(algorithm="sliding_window"),
     "rate_limits.tiers.free[0].algorithm", "token buckets"),
    (lambda rl, d: rl["tiers"]["free"][1].update(shadow_mode=True), "rate_limits.tiers.free[1].shadow_mode",
     "no shadow answer"),
    (lambda rl, d: rl["endpoints"][0]["limit"].update(requests_per_unit=0),
     "rate_limits.endpoints[0].limit.requests_per_unit", "max_tokens > 0"),
    (lambda rl, d: rl.update(local_cache_size_bytes=1024), "rate_limits.local_cache_size_bytes", "store"),
    (lambda rl, d: rl.update(stop_increment_when_over_limit=True), "rate_limits.stop_increment_when_over_limit",
     "stays charged"),
    (lambda rl, d: d["routes"][1].update(rate_limit={"failure_mode": "deny"}),
     "routes[1].rate_limit.failure_mode", "nothing can fail"),
]


@pytest.mark.parametrize(("change", "field", "reason"), REFUSED, ids=[r[1] for r in REFUSED])
def test_validate_refuses_what_local_cannot_express(change: Any, field: str, reason: str, tmp_path: Path) -> None:
    data = _local()
    change(data["rate_limits"], data)
    path = write_config(data, tmp_path / "gateway.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    pattern = re.compile(rf"^{re.escape(str(path))}:\d+: {re.escape(field)}: not expressible in enforcement: local")
    assert any(pattern.match(line) and reason in line for line in lines), lines


def test_the_same_keys_pass_in_service_mode(tmp_path: Path) -> None:
    data = _local()
    data["rate_limits"]["enforcement"] = "service"
    data["rate_limits"]["shadow_mode"] = True
    load_config(write_config(data, tmp_path / "gateway.yaml"))


def test_local_mode_compiles_buckets_not_a_service(tmp_path: Path) -> None:
    path = write_config(_local(), tmp_path / "gateway.yaml")
    config = load_config(path)
    bootstrap = compile_bootstrap(config)
    text = str(bootstrap)
    assert "envoy.filters.http.ratelimit'" not in text and "outrider_ratelimit" not in text
    assert "envoy.filters.network.ratelimit" not in text
    assert all(p.name != "ratelimit" for p in plan_processes(config, path, tmp_path, log_dir=tmp_path))
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][-1]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    # Where the rate limit filter stands: after ext_authz, so its metadata is there.
    assert names.index(LOCAL_FILTER) > names.index("envoy.filters.http.ext_authz")
    local = next(f for f in hcm["http_filters"] if f["name"] == LOCAL_FILTER)["typed_config"]
    buckets = {tuple((e["key"], e["value"]) for e in d["entries"]): d["token_bucket"] for d in local["descriptors"]}
    tier = ("outrider_limit", "tier")
    # free: 60/minute, 1000/hour, 10000/day; enterprise: 10000/minute and no other bucket (unlimited).
    assert buckets[tier, ("tier", "free"), ("user_id", ""), (WINDOW_KEY, "minute")] == {
        "max_tokens": 60, "tokens_per_fill": 60, "fill_interval": "60s"}
    assert buckets[tier, ("tier", "free"), ("user_id", ""), (WINDOW_KEY, "day")]["fill_interval"] == "86400s"
    assert [k for k in buckets if k[1] == ("tier", "enterprise")] == [
        (tier, ("tier", "enterprise"), ("user_id", ""), (WINDOW_KEY, "minute"))]
    assert buckets[tier, ("tier", UNKNOWN_TIER), ("user_id", ""), (WINDOW_KEY, "hour")]["max_tokens"] == 1000
    # per_ip: the token bucket as the service counts it (burst 200, 100 a second).
    assert buckets[("outrider_limit", "per_ip"), ("remote_address", "")] == {
        "max_tokens": 200, "tokens_per_fill": 100, "fill_interval": "1s"}
    assert buckets[("outrider_limit", "endpoint"), ("endpoint", "/api/v1/search")]["max_tokens"] == 50
    assert local["max_dynamic_descriptors"] == 100_000
    assert local["always_consume_default_token_bucket"] is False
    # The actions are the filter's own, each behind a gate on the route's metadata: a protected route opens
    # the tier gate (and its endpoint's), a public one the per-IP gate; the route carries no actions.
    routes = {r.name: compile_route(r, config) for r in config.routes}
    assert "rate_limits" not in routes["users"]["route"]
    gates = {name: r.get("metadata", {}).get("filter_metadata", {}).get(GATE_NAMESPACE) for name, r in routes.items()}
    assert gates["users"] == {"tier_authz": "tier", "endpoint_1": "endpoint"}
    assert gates["public"] == {"per_ip": "per_ip"} and gates["health-live"] is None
    # Where no limit applies, neither the filter nor its Lua answer runs.
    off = routes["health-live"]["typed_per_filter_config"]
    assert off[LUA_FILTER]["disabled"] is True
    assert off[LOCAL_FILTER]["filter_enabled"]["default_value"]["numerator"] == 0
    assert LUA_FILTER not in routes["users"].get("typed_per_filter_config", {})
    windows = [a["actions"][-1]["generic_key"]["descriptor_value"] for a in local["rate_limits"]
               if "generic_key" in a["actions"][-1]]
    assert sorted(set(windows)) == ["day", "hour", "minute"]
    # ext_proc's metadata on the same route is kept beside the gates.
    messages = routes["messages"]["metadata"]["filter_metadata"]
    assert messages[GATE_NAMESPACE] == {"tier_authz": "tier"} and len(messages) == 2


def test_explain_route_says_no_hop(tmp_path: Path) -> None:
    from outrider.plugins import ordered_plugins
    from outrider.route_explain import explain_route

    config = load_config(write_config(_local(), tmp_path / "gateway.yaml"))
    users = next(r for r in config.routes if r.name == "users")
    lines = explain_route(config, users, ordered_plugins())
    assert "  ratelimit: no hop (counted in Envoy, local_ratelimit): per user by tier (free, premium, " \
           "enterprise); endpoint /api/v1/users/profile" in lines
    # ext_authz and ext_proc remain; the rate limit is not counted as a hop.
    assert lines[-1] == "  2 service hops per request"
