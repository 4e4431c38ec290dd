"""envoyproxy/ratelimit-format files give the decisions that project documents; tier plans compile alike."""

from __future__ import annotations

from pathlib import Path

from ratelimit_service.backends.memory import MemoryBackend
from ratelimit_service.config import RateLimitsConfig, load_descriptor_file
from ratelimit_service.decision import OK, UNLIMITED_REMAINING, Decision, DescriptorInput, plan
from ratelimit_service.limits import LimitTable, compile_table
from tests.ratelimit.helpers import T0, desc, run, table_of

FIXTURES = Path(__file__).parent / "fixtures"


def table(*names: str) -> LimitTable:
    return compile_table(None, [load_descriptor_file(FIXTURES / n) for n in names])


def limit_of(t: LimitTable, domain: str, *entries: tuple[str, str]) -> int | None:
    match = t.lookup(domain, entries)
    return None if match is None else match.limits[0].requests_per_unit


async def admitted(t: LimitTable, domain: str, descriptors: list[DescriptorInput], tries: int) -> int:
    backend = MemoryBackend()
    decisions = [await run(backend, t, domain, descriptors, T0) for _ in range(tries)]
    return sum(not d.over for d in decisions)


def test_nested_descriptors_match_at_the_requests_depth() -> None:
    t = table("messaging.yaml")
    assert limit_of(t, "messaging", ("message_type", "marketing"), ("to_number", "2061111111")) == 5
    assert limit_of(t, "messaging", ("to_number", "2061111111")) == 100
    assert limit_of(t, "messaging", ("message_type", "marketing")) is None  # a placeholder, no limit
    assert limit_of(t, "messaging", ("message_type", "transactional"), ("to_number", "1")) is None
    assert limit_of(t, "other-domain", ("to_number", "1")) is None


async def test_each_number_gets_its_own_counter() -> None:
    t = table("messaging.yaml")
    marketing = [desc(("message_type", "marketing"), ("to_number", "2061111111"))]
    assert await admitted(t, "messaging", marketing, 7) == 5
    other = [desc(("message_type", "marketing"), ("to_number", "2062222222"))]
    assert await admitted(t, "messaging", other, 7) == 5


def test_key_value_is_preferred_to_key_alone() -> None:
    t = table("edge.yaml")
    assert limit_of(t, "edge_proxy_per_ip", ("remote_address", "50.0.0.1")) == 10
    assert limit_of(t, "edge_proxy_per_ip", ("remote_address", "50.0.0.5")) == 0


def test_depth_must_match() -> None:
    t = table("features.yaml")
    assert limit_of(t, "features", ("key", "value"), ("subkey", "x")) == 300
    assert limit_of(t, "features", ("key", "value")) is None
    assert limit_of(t, "features", ("key", "value"), ("subkey", "x"), ("more", "y")) is None


async def test_unlimited_never_reaches_the_store_and_reports_max_remaining() -> None:
    t = table("features.yaml")
    laid_out = plan(t, "features", [desc(("ldap", "x")), desc(("azure", "x"))], T0)
    assert len(laid_out.checks) == 1  # only azure is counted
    decision: Decision = await run(MemoryBackend(), t, "features", [desc(("ldap", "x"))], T0)
    assert decision.statuses[0].code == OK
    assert decision.statuses[0].remaining == UNLIMITED_REMAINING
    assert decision.headline is None


async def test_shadow_mode_never_limits_but_others_are_limited() -> None:
    t = table("features.yaml")
    user_a = [desc(("service", "auth-service"), ("user", "user-a"))]
    assert await admitted(t, "features", user_a, 15) == 15
    user_b = [desc(("service", "auth-service"), ("user", "user-b"))]
    assert await admitted(t, "features", user_b, 25) == 20


async def test_replaces_drops_the_named_limit_when_both_match() -> None:
    t = table("features.yaml")
    first = desc(("key_1", "value_1"), ("user", "bkthomps"))
    second = desc(("key_2", "value_2"), ("user", "bkthomps"))
    assert await admitted(t, "features", [first], 12) == 5
    assert await admitted(t, "features", [second], 12) == 10
    # Both: 10/s applies, and the 5/s limit is neither checked nor charged.
    backend = MemoryBackend()
    both = [await run(backend, t, "features", [first, second], T0) for _ in range(12)]
    assert sum(not d.over for d in both) == 10
    assert both[0].statuses[0].limit is None
    alone = await run(backend, t, "features", [first], T0)
    assert not alone.over and alone.statuses[0].remaining == 4


def test_detailed_metric_names_the_value() -> None:
    t = table("features.yaml")
    detailed = t.lookup("features", [("key1", "unspecified_value")])
    assert detailed is not None and detailed.metric_key == "features.key1_unspecified_value"
    plain = t.lookup("features", [("key1", "value1")])
    assert plain is not None and plain.metric_key == "features.key1_value1"
    assert plain.limits[0].requests_per_unit == 20
    rolled_up = t.lookup("features", [("azure", "a")])
    assert rolled_up is not None and rolled_up.metric_key == "features.azure"


def test_wildcard_values_match_by_prefix_after_exact_values() -> None:
    t = table("features.yaml")
    assert limit_of(t, "features", ("path", "/api/v1/users")) == 20
    assert limit_of(t, "features", ("path", "/api/v1/")) == 20
    assert limit_of(t, "features", ("path", "/api/v1/special")) == 2
    assert limit_of(t, "features", ("path", "/api/v2/users")) is None


def test_envoy_supplied_limit_overrides_the_config() -> None:
    t = table("edge.yaml")
    override = DescriptorInput((("remote_address", "50.0.0.5"),), 1, (7, "minute"))
    laid_out = plan(t, "edge_proxy_per_ip", [override], T0)
    assert [c.limit for c in laid_out.checks] == [7]


def _gateway() -> RateLimitsConfig:
    return RateLimitsConfig.model_validate({
        "per_ip": {"requests_per_unit": 100, "unit": "second", "burst": 200},
        "tiers": {
            "free": [{"requests_per_unit": 60, "unit": "minute"}, {"requests_per_unit": 1000, "unit": "hour"},
                     {"requests_per_unit": 10000, "unit": "day"}],
            "enterprise": [{"requests_per_unit": 10000, "unit": "minute"}, {"unlimited": True}],
        },
        "unknown_tier": "free",
        "endpoints": [{"path": "/api/v1/search", "limit": {"requests_per_unit": 50, "unit": "second"}},
                      {"prefix": "/api/v1/files/", "limit": {"requests_per_unit": 5, "unit": "second"}}],
    })


def test_gateway_plans_compile_into_descriptor_trees() -> None:
    t = compile_table(_gateway())
    ip = t.lookup("outrider", [("remote_address", "1.2.3.4")])
    assert ip is not None and (ip.limits[0].burst, ip.limits[0].requests_per_unit) == (200, 100)
    free = t.lookup("outrider", [("tier", "free"), ("user_id", "alice")])
    assert free is not None
    assert [(x.requests_per_unit, x.unit) for x in free.limits] == [(60, "minute"), (1000, "hour"), (10000, "day")]
    assert free.metric_key == "outrider.tier_free.user_id"
    enterprise = t.lookup("outrider", [("tier", "enterprise"), ("user_id", "bob")])
    assert enterprise is not None and [x.unit for x in enterprise.limits] == ["minute"]
    unknown = t.lookup("outrider", [("tier", "gold"), ("user_id", "carol")])
    assert unknown is not None and unknown.limits[0].requests_per_unit == 60
    search = t.lookup("outrider", [("endpoint", "/api/v1/search")])
    assert search is not None and search.limits[0].requests_per_unit == 50
    files = t.lookup("outrider", [("endpoint", "/api/v1/files/*")])
    assert files is not None and files.limits[0].requests_per_unit == 5


def test_several_windows_get_distinct_keys_with_every_part_escaped() -> None:
    t = compile_table(_gateway())
    laid_out = plan(t, "outrider", [desc(("tier", "free"), ("user_id", "alice")),
                                    desc(("endpoint", "/api/v1/search"))], T0)
    keys = [c.keys[0] for c in laid_out.checks]
    assert len(set(keys)) == 4
    start = T0 // 1000
    # `_` inside a part is escaped (keys.py); a node with several windows tells them apart by `:<unit>`.
    assert keys[0] == f"outrider_tier_free_user\\_id_alice_{start}:minute"
    assert keys[1].endswith(":hour") and keys[2].endswith(":day")
    assert keys[3] == f"outrider_endpoint_/api/v1/search_{start}"


def test_a_limit_sent_with_a_descriptor_applies_in_a_configured_domain_only() -> None:
    # envoyproxy/ratelimit's GetLimit returns nothing for an unknown domain before it looks at the
    # descriptor's own limit (src/config/config_impl.go): no caller makes counters in a domain of its own.
    t = compile_table(_gateway())
    sent = [DescriptorInput((("anything", "x"),), 1, (5, "second"))]
    assert plan(t, "outrider", sent, T0).checks
    assert not plan(t, "elsewhere", sent, T0).checks


def test_children_are_matched_by_key_and_value_not_by_their_joined_name() -> None:
    # envoyproxy/ratelimit finds a child by key + "_" + value, so a request's (a, b_c) would find the
    # config's (a_b, c); matched as pairs, it does not.
    t = table_of("""
domain: d
descriptors:
  - key: a_b
    value: c
    rate_limit: {unit: second, requests_per_unit: 1}
""")
    assert t.lookup("d", [("a_b", "c")]) is not None
    assert t.lookup("d", [("a", "b_c")]) is None
