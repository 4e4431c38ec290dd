"""envoyproxy/ratelimit's documented decision rules, one test each, citing where the reference states them.

Sources: the reference's README ("Descriptor list definition", "ShadowMode", "Including detailed metrics",
"Global ShadowMode", "Local Cache", "Request Fields", "Custom headers", settings in src/settings/settings.go)
and code (src/config/config_impl.go, src/service/ratelimit.go, src/limiter/base_limiter.go,
src/redis/fixed_cache_impl.go). Rules that touch counting run on the memory store and on a real redis-server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from prometheus_client import CollectorRegistry

from outrider.config.errors import ConfigError
from outrider.process import ManagedProcess
from ratelimit_service.backends.base import Backend
from ratelimit_service.backends.memory import MemoryBackend
from ratelimit_service.backends.redis_backend import RedisBackend
from ratelimit_service.config import RateLimitsConfig, load_descriptor_file, parse_descriptor_file
from ratelimit_service.decision import near_hits, near_threshold
from ratelimit_service.guard import GuardedBackend
from ratelimit_service.limits import LimitTable, compile_table
from ratelimit_service.metrics import service_metrics
from ratelimit_service.service import RateLimitService, Settings, local_cache_entries
from tests.ratelimit.helpers import rls_request, serving_stub, table_of
from tests.redis_harness import redis_url

Response = rls_pb2.RateLimitResponse
FIXTURES = Path(__file__).parent / "fixtures" / "reference"
NOW_S = 1_800_000_010.0  # 10 s into a minute
MAX_UINT32 = 4_294_967_295


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Rules that touch counting hold on both stores (the Redis Lua script mirrors the memory store)."""
    made: Backend
    if request.param == "memory":
        made = MemoryBackend()
    else:
        proc: ManagedProcess = request.getfixturevalue("shared_redis")
        made = RedisBackend(redis_url(proc), key_prefix=f"ref{uuid.uuid4().hex[:8]}:", timeout_s=2.0)
    yield made
    await made.close()


def ask(*descriptors: tuple[tuple[str, str], ...], domain: str = "d", hits: int = 0) -> rls_pb2.RateLimitRequest:
    return rls_request(*descriptors, domain=domain, hits=hits)


def service_of(table: LimitTable, backend: Backend, registry: CollectorRegistry | None = None,
               clock: list[float] | None = None, **settings: object) -> RateLimitService:
    now = clock or [NOW_S]
    metrics = service_metrics(registry or CollectorRegistry())
    return RateLimitService(Settings(table, **settings),  # type: ignore[arg-type]
                            GuardedBackend(backend, 2.0, metrics=metrics), clock=lambda: now[0], metrics=metrics)


def statuses(response: rls_pb2.RateLimitResponse) -> list[tuple[int, int]]:
    return [(s.code, s.limit_remaining) for s in response.statuses]


def headers(response: rls_pb2.RateLimitResponse) -> dict[str, str]:
    return {h.key: h.value for h in response.response_headers_to_add}


# ---- config keys -----------------------------------------------------------------------------------------


def test_every_documented_key_loads() -> None:
    """README "Descriptor list definition" and config_impl.go validKeys: key, value, rate_limit (name, replaces,
    unit, requests_per_unit, unlimited, unit_multiplier), shadow_mode, detailed_metric, value_to_metric,
    share_threshold, descriptors."""
    parsed = load_descriptor_file(FIXTURES / "every_key.yaml")
    table = compile_table(None, [parsed])
    vip = table.lookup("every-key", [("tier", "gold-vip"), ("user", "u")])
    assert vip is not None and vip.limits[0].replaces == ("gold_user",)
    batch = table.lookup("every-key", [("batch", "x")])
    assert batch is not None and batch.limits[0].window_s == 300  # unit_multiplier 5 × minute


@pytest.mark.parametrize(("text", "named"), [
    ((FIXTURES / "metadata.yaml").read_text(), "`metadata`"),
    ("domain: d\ndescriptors:\n  - key: k\n    quota: {name: q}\n", "`quota`"),
    ("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, quota_mode: true}\n",
     "`quota_mode`"),
    ("domain: d\ndescriptors:\n  - key: k\n    rate_limt: {unit: second, requests_per_unit: 1}\n", "rate_limt"),
])
def test_a_key_the_format_does_not_have_is_refused_naming_it(text: str, named: str) -> None:
    """config_impl.go validateYamlKeys: any other key is "config error, unknown key"; the file is refused."""
    with pytest.raises(ConfigError, match=named) as caught:
        parse_descriptor_file(text, "limits.yaml")
    assert "limits.yaml" in str(caught.value)


@pytest.mark.parametrize(("text", "reason"), [
    ("  - key: k\n    value: exact\n    share_threshold: true\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
     "share_threshold .* needs a wildcard"),
    ("  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1, unit_multiplier: 0}\n", "unit_multiplier"),
    ("  - key: k\n    rate_limit: {unlimited: true, unit: second}\n", "should not specify rate limit unit"),
    ("  - key: k\n    rate_limit: {name: a, replaces: [{name: a}], unit: second, requests_per_unit: 1}\n",
     "replaces should not contain name of same descriptor"),
    ("  - key: k\n    value: a*\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
     "  - key: k\n    value: ab*\n    rate_limit: {unit: second, requests_per_unit: 2}\n", "can never apply"),
    ("  - key: k\n    value: '*'\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
     "  - key: k\n    rate_limit: {unit: second, requests_per_unit: 2}\n", "can never apply"),
])
def test_a_rule_that_cannot_work_is_refused_with_its_reason(text: str, reason: str) -> None:
    """config_impl.go loadDescriptors refuses share_threshold without a wildcard, a unit with unlimited and a
    self-replacing rule; a wildcard another one always wins over (wildcards are tried in file order) is
    refused here rather than loaded as a rule that never applies."""
    with pytest.raises(ConfigError, match=reason):
        parse_descriptor_file("domain: d\ndescriptors:\n" + text, "limits.yaml")


# ---- matching ----------------------------------------------------------------------------------------------


def test_wildcards_match_as_the_reference_does() -> None:
    """config_impl.go GetLimit: `key_value` exactly first, then wildcard values in file order (a trailing `*` is
    a prefix; the reference's share_threshold test config also has `*` inside values: /api*v1, svc*ep*rpc),
    then the key alone; test/config/config_test.go TestWildcardConfig's cases."""
    table = compile_table(None, [load_descriptor_file(FIXTURES / "wildcards.yaml")])

    def rpu(key: str, value: str) -> int | None:
        found = table.lookup("wild", [(key, value)])
        return None if found is None else found.limits[0].requests_per_unit

    assert rpu("wild", "foo1") == rpu("wild", "foo2") == rpu("wild", "foo") == 20
    assert rpu("wild", "foobar") == 5  # the exact value wins over the wildcard
    assert rpu("wild", "bar") is None
    assert rpu("noWild", "foo1") is None  # no eager match without a `*`
    assert rpu("noVal", "anything") == 20
    assert (rpu("midWild", "barab"), rpu("midWild", "barb"), rpu("midWild", "bara")) == (7, 7, None)
    assert (rpu("multi", "svc-a-ep-b-rpc"), rpu("multi", "svcXrpc")) == (8, None)
    assert (rpu("path", "/api/v1/users"), rpu("path", "/other")) == (9, 99)  # wildcard before the key alone


async def test_share_threshold_values_share_one_counter(store: Backend) -> None:
    """README share_threshold / config_impl.go ShareThresholdKeyPattern: every value a wildcard matches counts
    on one counter (its key holds the pattern); without it each value has its own."""
    table = table_of("""
domain: d
descriptors:
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: own
    value: files/*
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: user
    value: user/*
    share_threshold: true
    descriptors:
      - key: resource
        value: res*v2
        share_threshold: true
        descriptors:
          - key: action
            rate_limit: {unit: minute, requests_per_unit: 2}
""")
    service = service_of(table, store)
    shared = [await service.decide(ask((("files", f"files/{n}"),))) for n in ("a", "b", "c", "d")]
    assert [s.statuses[0].limit_remaining for s in shared[:3]] == [2, 1, 0]
    assert shared[3].overall_code == Response.OVER_LIMIT
    own = [await service.decide(ask((("own", f"files/{n}"),))) for n in ("a", "b")]
    assert [s.statuses[0].limit_remaining for s in own] == [2, 2]
    # Nested levels each keep their pattern; the entry without share_threshold keeps its value.
    nested = [await service.decide(ask((("user", f"user/{u}"), ("resource", f"res-{r}-v2"), ("action", "read"))))
              for u, r in (("1", "a"), ("2", "b"), ("3", "c"))]
    assert [n.overall_code for n in nested] == [Response.OK, Response.OK, Response.OVER_LIMIT]
    other = await service.decide(ask((("user", "user/9"), ("resource", "res-z-v2"), ("action", "write"))))
    assert other.statuses[0].limit_remaining == 1


def test_metric_keys_follow_value_to_metric_and_detailed_metric() -> None:
    """config_impl.go GetLimit: value_to_metric puts the request's value in the stats key at that level;
    detailed_metric puts every entry's value ("Including detailed metrics for unspecified values")."""
    table = table_of("""
domain: d
descriptors:
  - key: route
    value_to_metric: true
    descriptors:
      - key: method
        rate_limit: {unit: minute, requests_per_unit: 60}
  - key: client
    descriptors:
      - key: path
        detailed_metric: true
        rate_limit: {unit: minute, requests_per_unit: 60}
  - key: plain
    rate_limit: {unit: minute, requests_per_unit: 60}
  - key: svc
    value: svc/*
    share_threshold: true
    value_to_metric: true
    descriptors:
      - key: endpoint
        detailed_metric: true
        rate_limit: {unit: minute, requests_per_unit: 80}
""")

    def metric(*entries: tuple[str, str]) -> str:
        found = table.lookup("d", list(entries))
        assert found is not None
        return found.metric_key

    assert metric(("route", "api"), ("method", "GET")) == "d.route_api.method"
    assert metric(("client", "c1"), ("path", "/x")) == "d.client_c1.path_/x"
    assert metric(("plain", "v")) == "d.plain"
    # share_threshold keeps the pattern in the key, over value_to_metric and detailed_metric alike.
    assert metric(("svc", "svc/a"), ("endpoint", "e1")) == "d.svc_svc/*.endpoint_e1"


# ---- request-level overrides -----------------------------------------------------------------------------


async def test_an_override_for_an_unknown_domain_is_ok_without_a_limit() -> None:
    """config_impl.go GetLimit returns nil for an unknown domain before looking at descriptor.limit; a known
    domain takes the override whether or not a rule matches the descriptor."""
    table = table_of("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 100}\n")
    service = service_of(table, MemoryBackend())

    async def with_override(domain: str) -> list[tuple[int, int, bool]]:
        seen = []
        for _ in range(3):
            request = ask((("unmatched", "x"),), domain=domain)
            request.descriptors[0].limit.requests_per_unit = 2
            request.descriptors[0].limit.unit = Response.RateLimit.MINUTE
            status = (await service.decide(request)).statuses[0]
            seen.append((status.code, status.limit_remaining, status.HasField("current_limit")))
        return seen

    assert await with_override("elsewhere") == [(Response.OK, 0, False)] * 3
    assert await with_override("d") == [(Response.OK, 1, True), (Response.OK, 0, True), (Response.OVER_LIMIT, 0, True)]


# ---- accounting of several descriptors -------------------------------------------------------------------

TWO = """
domain: d
descriptors:
  - key: small
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: big
    rate_limit: {unit: minute, requests_per_unit: 20}
"""
BOTH = ((("small", "x"),), (("big", "x"),))


async def test_a_refused_request_still_spends_the_other_descriptors_quota(store: Backend) -> None:
    """src/redis/fixed_cache_impl.go DoLimit: each descriptor's counter is incremented in one pipeline whatever
    the others decide (STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT off, the default)."""
    service = service_of(table_of(TWO), store)
    remaining = [statuses(await service.decide(ask(*BOTH))) for _ in range(3)]
    assert remaining == [[(1, 0), (1, 19)], [(2, 0), (1, 18)], [(2, 0), (1, 17)]]


async def test_stop_increment_spends_nothing_when_one_descriptor_is_over(store: Backend) -> None:
    """STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT (fixed_cache_impl.go DoLimit): with several descriptors, a
    request some counter would take over its limit increments none of them; its answer still reports what
    each counter has left."""
    service = service_of(table_of(TWO), store, stop_increment=True)
    remaining = [statuses(await service.decide(ask(*BOTH))) for _ in range(3)]
    assert remaining == [[(1, 0), (1, 19)], [(2, 0), (1, 18)], [(2, 0), (1, 18)]]
    assert statuses(await service.decide(ask(BOTH[1]))) == [(1, 18)]  # the refused two spent nothing on `big`
    # One descriptor alone is incremented, then compared (the check runs only for len(cacheKeys) > 1).
    assert (await service.decide(ask(BOTH[1], hits=25))).overall_code == Response.OVER_LIMIT
    assert (await service.decide(ask(BOTH[1]))).overall_code == Response.OVER_LIMIT


@pytest.mark.parametrize("stop", [False, True])
async def test_the_local_cache_never_changes_a_decision_or_a_count(store: Backend, stop: bool) -> None:
    """README "Local Cache": LOCAL_CACHE_SIZE_IN_BYTES only spares the store calls for keys known over the
    limit. Answers with it on equal answers with it off, request by request (before: a cached refusal
    reported the other descriptor's full limit, 20, after 9)."""
    backend_off = MemoryBackend() if isinstance(store, MemoryBackend) else store
    cached = service_of(table_of(TWO.replace("domain: d", "domain: c")), store, stop_increment=stop,
                        local_cache_entries=local_cache_entries(1 << 20))
    plain = service_of(table_of(TWO.replace("domain: d", "domain: p")), backend_off, stop_increment=stop)
    for _ in range(5):
        with_cache = await cached.decide(ask(*BOTH, domain="c"))
        without = await plain.decide(ask(*BOTH, domain="p"))
        assert statuses(with_cache) == statuses(without)
        assert with_cache.overall_code == without.overall_code
    assert cached._over_until  # the cache did answer for `small`


# ---- response details ------------------------------------------------------------------------------------

DETAILS = """
domain: d
descriptors:
  - key: named
    rate_limit: {name: per_user, unit: hour, requests_per_unit: 5}
  - key: free
    rate_limit: {unlimited: true}
  - key: soft
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
"""


async def test_statuses_follow_the_descriptors_with_the_reference_details() -> None:
    """ratelimit.go shouldRateLimitWorker and base_limiter.go generateResponseDescriptorStatus: one status per
    descriptor in request order; unlimited: OK, limit_remaining MaxUint32, no current_limit; no match: OK,
    0, no current_limit; a limit: current_limit with its name and unit, duration_until_reset = the rest of
    the window (utils.CalculateReset); over: limit_remaining 0."""
    service = service_of(table_of(DETAILS), MemoryBackend())
    response = await service.decide(ask((("free", "a"),), (("nothing", "b"),), (("named", "c"),), hits=2))
    free, nothing, named = response.statuses
    assert (free.code, free.limit_remaining, free.HasField("current_limit")) == (Response.OK, MAX_UINT32, False)
    assert (nothing.code, nothing.limit_remaining, nothing.HasField("current_limit")) == (Response.OK, 0, False)
    assert (named.current_limit.name, named.current_limit.unit, named.limit_remaining) == (
        "per_user", Response.RateLimit.HOUR, 3)
    assert named.duration_until_reset.seconds == 3600 - int(NOW_S) % 3600
    over = await service.decide(ask((("named", "c"),), hits=4))
    assert (over.overall_code, over.statuses[0].code, over.statuses[0].limit_remaining) == (
        Response.OVER_LIMIT, Response.OVER_LIMIT, 0)  # 1 was left: an over-limit status still says 0


async def test_a_shadow_rule_over_its_limit_answers_ok_with_nothing_left() -> None:
    """README "ShadowMode" and base_limiter.go: the rule is evaluated as usual, then the status is OK (its
    limit_remaining stays 0) and the shadow stat counts it."""
    registry = CollectorRegistry()
    service = service_of(table_of(DETAILS), MemoryBackend(), registry)
    answers = [await service.decide(ask((("soft", "x"),))) for _ in range(2)]
    assert [statuses(a) for a in answers] == [[(Response.OK, 0)], [(Response.OK, 0)]]
    assert all(a.overall_code == Response.OK for a in answers)
    assert registry.get_sample_value("rate_limit_shadow_total", {"domain": "d", "descriptor": "d.soft"}) == 1


async def test_global_shadow_mode_answers_ok_overall_and_counts_it() -> None:
    """README "Global ShadowMode" (SHADOW_MODE) and ratelimit.go: an OVER_LIMIT overall code becomes OK and
    global_shadow_mode is counted; the statuses still say OVER_LIMIT."""
    registry = CollectorRegistry()
    service = service_of(table_of(DETAILS), MemoryBackend(), registry, global_shadow=True)
    await service.decide(ask((("named", "x"),), hits=5))
    response = await service.decide(ask((("named", "x"),)))
    assert response.overall_code == Response.OK and response.statuses[0].code == Response.OVER_LIMIT
    assert "Retry-After" not in headers(response) and not response.raw_body
    assert registry.get_sample_value("rate_limit_global_shadow_total") == 1
    config = RateLimitsConfig.model_validate({"shadow_mode": True})
    assert config.shadow_mode and not RateLimitsConfig().shadow_mode


@pytest.mark.parametrize("enabled", [True, False])
async def test_ratelimit_headers_follow_the_response_headers_switch(enabled: bool) -> None:
    """LIMIT_RESPONSE_HEADERS_ENABLED (README "Custom headers", ratelimit.go): RateLimit-Limit, -Remaining and
    -Reset of the descriptor closest to its limit, only when enabled."""
    service = service_of(table_of(DETAILS), MemoryBackend(), response_headers=enabled)
    response = await service.decide(ask((("named", "x"),)))
    expected = {"RateLimit-Limit": "5", "RateLimit-Remaining": "4", "RateLimit-Reset": str(3600 - int(NOW_S) % 3600)}
    assert headers(response) == (expected if enabled else {})


def test_near_limit_counts_only_the_hits_past_the_ratio() -> None:
    """base_limiter.go checkNearLimitThreshold / checkOverLimitThreshold: threshold floor(limit × ratio) in
    float32; hits past it and not past the limit count; an already-near request counts whole."""
    assert near_threshold(10, 0.8) == 8
    assert near_threshold(90, 0.7) == 63  # float32 rounds 0.7 × 90 to 63.0; float64 gives 62.99…
    assert near_hits(10, 0.8, before=7, after=8, hits=1) == 0
    assert near_hits(10, 0.8, before=8, after=9, hits=1) == 1
    assert near_hits(10, 0.8, before=6, after=10, hits=4) == 2
    assert near_hits(10, 0.8, before=6, after=11, hits=5) == 2  # over: the part between 8 and 10
    assert near_hits(10, 0.8, before=10, after=11, hits=1) == 0


async def test_the_near_limit_stat_is_counted_per_descriptor() -> None:
    """README "Statistics": near_limit per descriptor key (rate_limit_near_limit_total here)."""
    registry = CollectorRegistry()
    table = table_of("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 10}\n")
    service = service_of(table, MemoryBackend(), registry, near_ratio=0.8)
    for _ in range(11):
        await service.decide(ask((("k", "v"),)))
    assert registry.get_sample_value("rate_limit_near_limit_total", {"domain": "d", "descriptor": "d.k"}) == 2


@pytest.mark.parametrize(("make", "message"), [
    (lambda: ask((("k", "v"),), domain=""), "rate limit domain must not be empty"),
    (lambda: rls_pb2.RateLimitRequest(domain="d"), "rate limit descriptor list must not be empty"),
])
async def test_an_empty_domain_or_descriptor_list_is_invalid_argument(make: object, message: str) -> None:
    """ratelimit.go shouldRateLimitWorker: checkServiceErr on an empty domain and an empty descriptor list;
    an RPC error (INVALID_ARGUMENT here), not an answer."""
    async for stub in serving_stub(service_of(table_of(DETAILS), MemoryBackend())):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ShouldRateLimit(make(), timeout=5)  # type: ignore[operator]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == message


def test_a_wildcard_another_file_of_the_domain_always_wins_over_is_refused() -> None:
    """Merged files of one domain (MERGE_DOMAIN_CONFIG) load descriptors in file order, so the same rule as
    within one file: a wildcard an earlier one covers never applies and is refused, naming it."""
    first = parse_descriptor_file("domain: m\ndescriptors:\n  - key: k\n    value: a*\n"
                                  "    rate_limit: {unit: second, requests_per_unit: 1}\n", "one.yaml")
    second = parse_descriptor_file("domain: m\ndescriptors:\n  - key: k\n    value: ab*\n"
                                   "    rate_limit: {unit: second, requests_per_unit: 2}\n", "two.yaml")
    with pytest.raises(ValueError, match=r"'m\.k_ab\*' can never apply"):
        compile_table(None, [first, second])
    assert compile_table(None, [second, first]).lookup("m", [("k", "abc")]) is not None
