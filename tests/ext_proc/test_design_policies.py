"""The design's example policies (examples/gateway.yaml) through real Envoy: response transform, cache rules
(MISS→HIT, vary, TTL), invalidation by a write and by the purge webhook — on two gateways sharing one Redis.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import redis

from ext_proc.cache import resource_key
from tests.conftest import start_stack
from tests.ext_proc.conftest import ext_proc_config_dict
from tests.harness import Stack

PURGE_TOKEN = "purge-" + "t" * 26
PREFIX = "outrider:cache:"
BRIEF = "/api/v1/public/brief/"  # a 1 s rule of the test's own (the design's TTLs are checked in Redis)


class Gateways:
    def __init__(self, a: Stack, b: Stack, redis_url: str) -> None:
        self.a, self.b = a, b
        self.redis = redis.Redis.from_url(redis_url)

    def purge(self, stack: Stack, body: dict[str, Any], token: str | None = PURGE_TOKEN) -> httpx.Response:
        port = stack.data["services"]["ext_proc"]["admin_port"]
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        return httpx.post(f"http://127.0.0.1:{port}/v1/cache/purge", json=body, headers=headers, timeout=5)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    from tests.redis_harness import redis_process, redis_url

    redis_proc = redis_process(tmp_path_factory.mktemp("redis")).start().wait_ready(10)
    token_file = tmp_path_factory.mktemp("secrets") / "purge-token"
    token_file.write_text(PURGE_TOKEN + "\n")
    stacks: list[Stack] = []
    try:
        url = redis_url(redis_proc)
        for name in ("a", "b"):
            data = ext_proc_config_dict()
            data["cache"].update(backend="redis", redis_url=url)
            data["cache"]["rules"].insert(0, {"path": BRIEF + "*", "ttl_s": 1})
            data["services"]["ext_proc"]["purge_token_file"] = str(token_file)
            stacks.append(start_stack(tmp_path_factory.mktemp(f"gateway-{name}"), data))
        yield Gateways(stacks[0], stacks[1], url)
    finally:
        for stack in stacks:
            stack.stop()
        redis_proc.stop()


def _user(g: Gateways, roles: tuple[str, ...] = ("user",)) -> tuple[str, dict[str, str]]:
    user = f"u{uuid.uuid4().hex[:8]}"
    return user, {"authorization": f"Bearer {g.a.token(user, roles, 'premium')}", "accept-language": "en"}


def status(response: httpx.Response) -> str:
    return response.headers["x-cache-status"]


def test_user_profile_miss_hit_and_vary(gateways: Gateways) -> None:
    g = gateways
    user, auth = _user(g)
    path = f"/api/v1/users/{user}"
    first = g.a.get(path, headers=auth)
    assert first.status_code == 200 and status(first) == "MISS"
    hit = g.a.get(path, headers=auth)
    assert status(hit) == "HIT" and hit.json() == first.json() and int(hit.headers["age"]) >= 0
    assert hit.headers["x-response-time"].endswith("ms")
    assert status(g.b.get(path, headers=auth)) == "HIT", "the other gateway reads the shared entry"
    # Varies by Accept-Language and by Authorization (another token of the same user is another key).
    assert status(g.a.get(path, headers={**auth, "accept-language": "de"})) == "MISS"
    other = {**auth, "authorization": f"Bearer {g.a.token(user, ('user',), 'free')}"}
    assert status(g.a.get(path, headers=other)) == "MISS"
    # Nested paths are not /api/v1/users/:id: no rule, BYPASS.
    assert status(g.a.get(path + "/settings", headers=auth)) == "BYPASS"


def test_design_ttls_and_expiry(gateways: Gateways) -> None:
    g = gateways
    user, auth = _user(g)
    assert status(g.a.get(f"/api/v1/users/{user}", headers=auth)) == "MISS"
    public = f"/api/v1/public/catalog/{uuid.uuid4().hex[:8]}"
    assert status(g.a.get(public)) == "MISS"

    def entry_ttl_s(path: str) -> float:
        (key,) = g.redis.smembers(resource_key(PREFIX, path))
        return int(g.redis.pttl(key)) / 1000

    assert 295 <= entry_ttl_s(f"/api/v1/users/{user}") <= 300
    assert 3595 <= entry_ttl_s(public) <= 3600
    brief = BRIEF + uuid.uuid4().hex[:8]
    assert status(g.a.get(brief)) == "MISS"
    assert status(g.a.get(brief)) == "HIT"
    deadline = time.monotonic() + 5
    while status(g.a.get(brief)) == "HIT":  # expires after its 1 s TTL
        assert time.monotonic() < deadline, "the entry outlived its TTL"
        time.sleep(0.1)


def test_unsafe_methods_never_cached_and_invalidate_on_both_gateways(gateways: Gateways) -> None:
    g = gateways
    user, auth = _user(g, ("admin",))  # may DELETE too
    path = f"/api/v1/users/{user}"
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = g.a.request(method, path, headers=auth, json={"theme": "dark"})
        assert status(g.a.get(path, headers=auth)) == "MISS"
        assert status(g.b.get(path, headers=auth)) == "HIT"
        response = g.a.request(method, path, headers=auth, json={"theme": "dark"})
        assert response.status_code == 200 and status(response) == "BYPASS", method
        assert status(g.b.get(path, headers=auth)) == "MISS", f"{method} on a purged the entry for b"
        g.purge(g.a, {"path": path})  # b's refill: the next round starts empty


def test_purge_webhook_needs_its_token(gateways: Gateways) -> None:
    g = gateways
    for token in (None, "wrong-" + "x" * 20):
        refused = g.purge(g.a, {"path": "/api/v1/public/x"}, token)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    # The gateway's own token (a JWT) is no purge token either.
    assert g.purge(g.a, {"prefix": "/"}, g.a.token("admin", ("admin",))).status_code == 401
    assert g.purge(g.a, {"path": "relative"}).status_code == 400
    assert g.purge(g.a, {"path": "/a", "prefix": "/b"}).status_code == 400


def test_purge_by_path_and_prefix_seen_by_both_gateways(gateways: Gateways) -> None:
    g = gateways
    base = f"/api/v1/public/catalog/{uuid.uuid4().hex[:8]}/"
    paths = [base + "a", base + "b", base + "c"]
    for path in paths:
        assert status(g.a.get(path)) == "MISS"
        assert status(g.a.get(path + "?page=2")) == "MISS"
        assert status(g.b.get(path)) == "HIT"
    # Exact path, on gateway a: every representation of that path (any query) is gone, for b too.
    answer = g.purge(g.a, {"path": paths[0]})
    assert answer.status_code == 200 and answer.json() == {"purged": 2, "path": paths[0]}
    assert status(g.b.get(paths[0])) == "MISS" and status(g.b.get(paths[1])) == "HIT"
    # A prefix, on gateway b: the rest, seen by a.
    answer = g.purge(g.b, {"prefix": base})
    # a (refilled by b's miss above), b and c with their ?page=2: 5 entries.
    assert answer.status_code == 200 and answer.json() == {"purged": 5, "prefix": base}
    assert all(status(g.a.get(path)) == "MISS" for path in paths[1:])
    assert g.purge(g.b, {"prefix": base + "zzz"}).json()["purged"] == 0
    metrics = httpx.get(f"http://127.0.0.1:{g.b.data['services']['ext_proc']['metrics_port']}/metrics").text
    assert 'ext_proc_events_total{detail="prefix",kind="cache_purge"} 2.0' in metrics


def test_response_transform_on_every_route(gateways: Gateways) -> None:
    g = gateways
    secret = {"profile": {"name": "n", "password": "p", "items": [{"secret_key": "s", "internal_id": 7, "k": 1}]},
              "internal_id": 1}
    posted = g.a.request("POST", "/api/v1/public/echo", json=secret)  # the demo upstream echoes the body back
    assert posted.status_code == 200 and status(posted) == "BYPASS"
    doc = posted.json()
    assert doc["json"] == {"profile": {"name": "n", "items": [{"k": 1}]}}, "removed at any depth"
    assert doc["api_version"] == "v1"
    assert datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00")).tzinfo is not None
    assert posted.headers["x-response-time"].endswith("ms")
    # A protected route no cache rule covers: transformed too, BYPASS said by the route itself.
    _, auth = _user(g)
    files = g.a.request("POST", "/api/v1/files/x", headers=auth, json={"a": {"password": "p"}})
    assert files.status_code == 200 and status(files) == "BYPASS"
    assert files.json()["json"] == {"a": {}} and files.json()["api_version"] == "v1"
    assert "x-response-time" in files.headers
