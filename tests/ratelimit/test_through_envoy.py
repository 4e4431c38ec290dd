"""Rate limits through a real Envoy: tiers from ext_authz's metadata, per-IP bursts, endpoint limits, headers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from outrider.process import ManagedProcess
from tests.conftest import start_stack
from tests.harness import Stack, example_config_dict
from tests.redis_harness import redis_url

PER_IP_BURST = 5
SEARCH_LIMIT = 3


def fresh_minute(margin_s: float = 10.0) -> None:
    """Per-minute fixed windows reset on the minute: start a counting test well inside one."""
    while time.time() % 60 > 60 - margin_s:
        time.sleep(0.1)


@pytest.fixture(scope="module", params=["memory", "redis"])
def rl_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = example_config_dict()
    rl = data["rate_limits"]
    # Exact counts need the store's answers: a generous budget keeps a loaded test machine from
    # answering in the failure mode (which tests/ratelimit/test_processes.py covers with 20 ms).
    rl["budget_ms"] = 500
    data["services"]["ratelimit"]["timeout_ms"] = 1000
    # Refill one token a minute: the burst alone decides within the test, whatever the machine's speed.
    rl["per_ip"] = {"requests_per_unit": 1, "unit": "minute", "burst": PER_IP_BURST}
    rl["endpoints"] = [e for e in rl["endpoints"] if e["path"] != "/api/v1/search"]
    rl["endpoints"].append({"path": "/api/v1/search", "limit": {"requests_per_unit": SEARCH_LIMIT, "unit": "minute"}})
    # Search behind a token here, so the per-IP bucket (public routes) and the endpoint test stay apart.
    for route in data["routes"]:
        if route["name"] == "search":
            route.pop("public")
            route["resource"] = "messages"
    if request.param == "redis":
        redis: ManagedProcess = request.getfixturevalue("shared_redis")
        rl["redis"] = {"url": redis_url(redis), "key_prefix": f"e2e{uuid.uuid4().hex[:6]}:"}
    stack = start_stack(tmp_path_factory.mktemp(f"rl-{request.param}"), data)
    yield stack
    stack.stop()


def bearer(stack: Stack, user: str, tier: str) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.token(user, ('user',), tier)}"}


def assert_429(response: object) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    assert response.status_code == 429  # type: ignore[attr-defined]
    assert headers["content-type"] == "application/json"
    assert int(headers["retry-after"]) >= 1
    assert headers["ratelimit-remaining"] == "0"
    body = response.json()  # type: ignore[attr-defined]
    assert body["error"] == "rate_limited" and body["retry_after"] == int(headers["retry-after"])


def test_free_tier_gets_exactly_its_minute_quota_then_429(rl_stack: Stack) -> None:
    fresh_minute()
    headers = bearer(rl_stack, f"free-{uuid.uuid4().hex[:6]}", "free")
    with rl_stack.client() as client:
        responses = [client.get("/api/v1/users/me", headers=headers) for _ in range(61)]
    assert [r.status_code for r in responses[:60]] == [200] * 60
    assert [r.headers["ratelimit-remaining"] for r in responses[:60]] == [str(n) for n in range(59, -1, -1)]
    assert responses[0].headers["ratelimit-limit"] == "60"
    assert 0 < int(responses[0].headers["ratelimit-reset"]) <= 60
    assert_429(responses[60])
    assert responses[60].headers["ratelimit-limit"] == "60"
    # Another free user has a quota of their own.
    other = rl_stack.get("/api/v1/users/me", headers=bearer(rl_stack, "someone-else", "free"))
    assert other.status_code == 200


def test_premium_gets_more(rl_stack: Stack) -> None:
    fresh_minute()
    headers = bearer(rl_stack, f"prem-{uuid.uuid4().hex[:6]}", "premium")
    with rl_stack.client() as client:
        responses = [client.get("/api/v1/users/me", headers=headers) for _ in range(61)]
    assert all(r.status_code == 200 for r in responses)
    assert responses[-1].headers["ratelimit-limit"] == "1000"
    assert responses[-1].headers["ratelimit-remaining"] == "939"


def test_anonymous_public_routes_are_limited_per_ip_with_the_burst(rl_stack: Stack) -> None:
    with rl_stack.client() as client:
        responses = [client.get(f"/api/v1/public/item{i}") for i in range(PER_IP_BURST + 2)]
    assert [r.status_code for r in responses] == [200] * PER_IP_BURST + [429, 429]
    assert responses[0].headers["ratelimit-limit"] == str(PER_IP_BURST)
    assert_429(responses[PER_IP_BURST])


def test_search_is_limited_per_endpoint_for_all_callers(rl_stack: Stack) -> None:
    fresh_minute()
    users = [bearer(rl_stack, f"searcher{i}", "enterprise") for i in range(SEARCH_LIMIT + 1)]
    with rl_stack.client() as client:
        # Different users, one shared budget; the query string is not part of the endpoint.
        responses = [client.get(f"/api/v1/search?q={i}", headers=h) for i, h in enumerate(users)]
        other_path = client.get("/api/v1/searchable", headers=users[0])
    assert [r.status_code for r in responses] == [200] * SEARCH_LIMIT + [429]
    assert_429(responses[-1])
    assert other_path.status_code == 200  # the prefix route matches, the endpoint limit does not


def test_unlimited_routes_carry_no_headers(rl_stack: Stack) -> None:
    response = rl_stack.get("/health/live")
    assert response.status_code == 200
    assert "ratelimit-limit" not in response.headers


def test_one_callers_counter_is_never_anothers(rl_stack: Stack) -> None:
    """Issue 11, class 2: descriptor entries were joined with `_` unescaped, so `tier=free_user_id_X,
    user_id=x` and `tier=free, user_id=X_user_id_x` shared a counter and one caller spent the other's
    quota. Both callers here hold valid tokens whose claims say so; the attacker spends a whole minute's
    quota, and the victim must still have all of theirs."""
    fresh_minute()
    tag = uuid.uuid4().hex[:6]
    victim = bearer(rl_stack, f"{tag}_user_id_v", "free")
    attacker = bearer(rl_stack, "v", f"free_user_id_{tag}")  # an unknown tier: the free plan (unknown_tier)
    with rl_stack.client() as client:
        spent = [client.get("/api/v1/users/me", headers=attacker) for _ in range(61)]
        assert [r.status_code for r in spent[:60]] == [200] * 60 and spent[60].status_code == 429
        own = client.get("/api/v1/users/me", headers=victim)
    assert own.status_code == 200
    assert own.headers["ratelimit-remaining"] == "59"
