"""Two gateway stacks (two Envoys, each with its own services and control plane) on ONE Redis behave as one
gateway: one rate limit, counted once across both; one response cache; an invalidation on one seen by the other.

This is what scaling the gateway Deployment out relies on (deploy/kubernetes: every gateway pod's
ratelimit and ext_proc sidecars point at the outrider-redis Service).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import start_stack
from tests.harness import Stack, example_config_dict
from tests.ratelimit.test_through_envoy import assert_429, fresh_minute

FREE_PER_MINUTE = 60  # the example's free tier, first window


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    from tests.redis_harness import redis_process, redis_url

    redis = redis_process(tmp_path_factory.mktemp("redis")).start().wait_ready(10)
    stacks: list[Stack] = []
    try:
        url = redis_url(redis)
        prefix = f"shared{uuid.uuid4().hex[:6]}:"
        for name in ("a", "b"):
            data = example_config_dict()
            rl = data["rate_limits"]
            # Exact counts need Redis's answers, not the failure mode's: a generous budget on a loaded machine.
            rl["budget_ms"] = 500
            data["services"]["ratelimit"]["timeout_ms"] = 1000
            rl["redis"] = {"url": url, "key_prefix": prefix}
            data["cache"]["backend"] = "redis"
            data["cache"]["redis_url"] = url
            stacks.append(start_stack(tmp_path_factory.mktemp(f"gateway-{name}"), data))
        yield stacks[0], stacks[1]
    finally:
        for stack in stacks:
            stack.stop()
        redis.stop()


def test_one_limit_counted_once_across_two_gateways(two_gateways: tuple[Stack, Stack]) -> None:
    a, b = two_gateways
    fresh_minute()
    user = f"free-{uuid.uuid4().hex[:6]}"
    headers = {"authorization": f"Bearer {a.token(user, ('user',), 'free')}"}
    with a.client() as on_a, b.client() as on_b:
        # Alternate: each gateway alone would allow all of them; together they spend one quota.
        responses = [(on_a if i % 2 == 0 else on_b).get("/api/v1/users/me", headers=headers)
                     for i in range(FREE_PER_MINUTE)]
        assert [r.status_code for r in responses] == [200] * FREE_PER_MINUTE
        remaining = [int(r.headers["ratelimit-remaining"]) for r in responses]
        assert remaining == list(range(FREE_PER_MINUTE - 1, -1, -1)), "one counter, decremented by both"
        assert_429(on_a.get("/api/v1/users/me", headers=headers))
        assert_429(on_b.get("/api/v1/users/me", headers=headers))


def test_response_cache_and_its_invalidation_are_shared(two_gateways: tuple[Stack, Stack]) -> None:
    a, b = two_gateways
    user = f"cache-{uuid.uuid4().hex[:6]}"
    auth = {"authorization": f"Bearer {a.token(user, ('user',), 'premium')}", "accept-language": "en"}
    path = f"/api/v1/users/{user}"  # GET /api/v1/users/:id: the design's cached rule
    first = a.get(path, headers=auth)
    assert first.status_code == 200 and first.headers["x-cache-status"] == "MISS"
    on_b = b.get(path, headers=auth)
    assert on_b.headers["x-cache-status"] == "HIT", "gateway b serves what gateway a cached"
    assert on_b.json() == first.json()
    # A write through gateway a purges the entry for both.
    assert a.request("PUT", path, headers=auth, json={"theme": "dark"}).status_code == 200
    assert b.get(path, headers=auth).headers["x-cache-status"] == "MISS"
    assert a.get(path, headers=auth).headers["x-cache-status"] == "HIT", "b's fetch refilled the shared entry"

