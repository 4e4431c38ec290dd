"""Through Envoy: cache hits without the upstream, invalidation, vary_by, Redis; the processor killed and back."""

from __future__ import annotations

import hashlib
from pathlib import Path

import redis

from tests.conftest import start_stack
from tests.ext_proc.conftest import ext_proc_config_dict
from tests.harness import Stack

CATALOG = "/api/v1/public/catalog/items"


def test_cache_hit_with_upstream_stopped_then_put_invalidates(ep_own_stack: Stack) -> None:
    stack = ep_own_stack
    first = stack.get(CATALOG)
    assert first.status_code == 200
    assert first.headers["x-cache-status"] == "MISS"
    hit = stack.get(CATALOG)
    assert hit.headers["x-cache-status"] == "HIT"
    assert hit.json() == first.json()
    assert int(hit.headers["content-length"]) == len(hit.content)

    stack.procs["demo-upstream"].kill()
    assert stack.get("/api/v1/public/x").status_code == 503  # the upstream really is gone
    still = stack.get(CATALOG)
    assert still.status_code == 200
    assert still.headers["x-cache-status"] == "HIT"
    assert still.json() == first.json()
    # A failed write invalidates nothing (RFC 9111 4.4: only non-error responses do).
    assert stack.request("PUT", CATALOG, json={"x": 1}).status_code == 503
    assert stack.get(CATALOG).headers["x-cache-status"] == "HIT"

    stack.procs["demo-upstream"].start().wait_ready(20)
    assert stack.request("PUT", CATALOG, json={"x": 1}).status_code == 200
    assert stack.get(CATALOG).headers["x-cache-status"] == "MISS"
    assert stack.get(CATALOG).headers["x-cache-status"] == "HIT"


def test_vary_by_and_request_no_cache(ep_own_stack: Stack) -> None:
    stack = ep_own_stack
    # GET /api/v1/users/:id varies by Authorization and Accept-Language (the design's rule).
    english = {"authorization": f"Bearer {stack.token('varyuser', ('user',), 'premium')}", "accept-language": "en"}
    path = "/api/v1/users/varyuser"
    assert stack.get(path, headers=english).headers["x-cache-status"] == "MISS"
    assert stack.get(path, headers=english).headers["x-cache-status"] == "HIT"
    german = stack.get(path, headers={**english, "accept-language": "de"})
    assert german.headers["x-cache-status"] == "MISS"
    assert german.json()["headers"]["accept-language"] == "de"
    other = {**english, "authorization": f"Bearer {stack.token('varyuser', ('user',), 'free')}"}
    assert stack.get(path, headers=other).headers["x-cache-status"] == "MISS", "another credential"
    # /api/v1/public/** varies by nothing: any language gets the one entry.
    assert stack.get(CATALOG + "/1", headers={"accept-language": "en"}).headers["x-cache-status"] == "MISS"
    assert stack.get(CATALOG + "/1", headers={"accept-language": "de"}).headers["x-cache-status"] == "HIT"
    # Another query string is another resource representation.
    assert stack.get(CATALOG + "/1?page=2").headers["x-cache-status"] == "MISS"
    # The client asks for a fresh answer: no read, but the fresh answer is stored.
    fresh = stack.get(CATALOG + "/1", headers={"cache-control": "no-cache"})
    assert fresh.headers["x-cache-status"] == "MISS"
    # POST is never answered from the cache.
    assert stack.request("POST", "/api/v1/public/catalog/other", json={}).headers["x-cache-status"] == "BYPASS"


def test_processor_killed_fails_closed_and_recovers(ep_own_stack: Stack) -> None:
    stack = ep_own_stack
    assert stack.get("/api/v1/public/x").status_code == 200
    stack.procs["ext_proc"].kill()
    failed = stack.get("/api/v1/public/x")
    assert failed.status_code == 500
    # Routes that do not use the processor are not affected.
    assert stack.get("/health/live").status_code == 200
    stack.wait_until(lambda: stack.get("/health/ready").status_code == 503, what="not ready")

    stack.procs["ext_proc"].start().wait_ready(30)
    stack.wait_until(lambda: stack.get("/api/v1/public/x").status_code == 200, what="traffic to flow again")
    assert stack.procs["envoy"].running


def test_redis_backend_shares_entries_and_stores_no_credentials(tmp_path: Path, redis_server: str) -> None:
    data = ext_proc_config_dict()
    data["cache"]["backend"] = "redis"
    data["cache"]["redis_url"] = redis_server
    stack = start_stack(tmp_path, data)
    try:
        token = stack.token("cacheuser", ("user",), "premium")
        auth = {"authorization": f"Bearer {token}", "accept-language": "en"}
        path = "/api/v1/users/cacheuser"
        assert stack.get(path, headers=auth).headers["x-cache-status"] == "MISS"
        assert stack.get(path, headers=auth).headers["x-cache-status"] == "HIT"
        other = stack.token("someone", ("user",), "premium")
        assert stack.get(path, headers={**auth, "authorization": f"Bearer {other}"}).headers[
            "x-cache-status"] == "MISS"

        client = redis.Redis.from_url(redis_server)
        keys = client.keys("outrider:cache:*")
        assert keys
        entries = [k for k in keys if b":e:" in k]
        assert len(entries) == 2
        # Keys are hashes; values hold the response only (the echo's x-auth-token is what the upstream
        # saw, renamed: the token never appears as an Authorization header or in a key).
        for key in keys:
            assert token.encode() not in key
            assert hashlib.sha256(token.encode()).hexdigest().encode() not in key
        assert stack.request("PUT", path, headers=auth, json={"theme": "dark"}).status_code == 200
        assert not [k for k in client.keys("outrider:cache:*") if b":e:" in k]
        assert stack.get(path, headers=auth).headers["x-cache-status"] == "MISS"
    finally:
        stack.stop()


def test_a_cache_redis_that_refuses_us_costs_the_cache_not_the_request(tmp_path: Path) -> None:
    """Redis up but refusing every command (it wants a password the gateway does not have): each cache call
    fails, and requests are still answered — from the upstream, marked BYPASS/MISS, counted as cache errors."""
    import httpx

    from tests.redis_harness import redis_process, redis_url

    guarded = redis_process(tmp_path / "redis", extra=["--requirepass", "not-the-gateways-password"])
    guarded.start().wait_ready(10)
    data = ext_proc_config_dict()
    data["cache"]["backend"] = "redis"
    data["cache"]["redis_url"] = redis_url(guarded)  # no credentials: every command gets NOAUTH
    (tmp_path / "stack").mkdir()
    stack = start_stack(tmp_path / "stack", data)
    try:
        metrics = f"http://127.0.0.1:{stack.data['services']['ext_proc']['metrics_port']}/metrics"

        def cache_errors() -> float:
            lines = httpx.get(metrics, timeout=5).text.splitlines()
            return sum(float(line.rsplit(" ", 1)[1]) for line in lines
                       if line.startswith("ext_proc_cache_errors_total"))

        before = cache_errors()
        answers = [stack.get(CATALOG) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert all(a.headers["x-cache-status"] != "HIT" for a in answers)  # nothing could be stored or read
        assert answers[0].json()["path"] == CATALOG  # answered by the upstream itself
        assert cache_errors() >= before + 3
    finally:
        stack.stop()
        guarded.stop()
