"""Cache policy (pure), the memory LRU, and the Redis backend against a real redis-server."""

from __future__ import annotations

from typing import Any

import pytest

from ext_proc.cache import CacheEntry, CachePolicy, cache_control, hit_headers
from ext_proc.cache_backends import CacheUnavailable, MemoryCache, RedisCache
from ext_proc.config import CacheConfig

POLICY = CachePolicy(CacheConfig(rules=[
    {"path": "/catalog/**", "ttl_s": 300, "vary_by": ["Accept-Language"]},  # type: ignore[list-item]
    {"path": "/users/*/settings", "ttl_s": 60, "vary_by": ["Authorization"]},  # type: ignore[list-item]
]), exclude_headers=["x-response-time"])


def test_rules_and_keys() -> None:
    assert POLICY.lookup("POST", "/catalog/a", {}) is None
    assert POLICY.lookup("GET", "/other", {}) is None
    assert POLICY.lookup("GET", "/users/a/b/settings", {}) is None  # * is one segment
    en = POLICY.lookup("GET", "/catalog/a", {"accept-language": "en"})
    de = POLICY.lookup("GET", "/catalog/a", {"accept-language": "de"})
    again = POLICY.lookup("GET", "/catalog/a", {"accept-language": "en", "x-other": "1"})
    query = POLICY.lookup("GET", "/catalog/a?p=2", {"accept-language": "en"})
    assert en is not None and de is not None and again is not None and query is not None
    assert en.key == again.key and en.key != de.key and en.key != query.key
    assert en.resource == query.resource  # one resource, every representation
    assert en.read and en.write and en.rule.ttl_s == 300


def test_authorization_never_in_clear() -> None:
    lookup = POLICY.lookup("GET", "/users/u/settings", {"authorization": "Bearer secret-token"})
    assert lookup is not None and lookup.vary_authorization
    assert "secret" not in lookup.key and "Bearer" not in lookup.key


@pytest.mark.parametrize(("request_cc", "read", "write"), [
    ("", True, True), ("no-cache", False, True), ("max-age=0", False, True), ("no-store", False, False),
])
def test_request_cache_control(request_cc: str, read: bool, write: bool) -> None:
    lookup = POLICY.lookup("GET", "/catalog/a", {"cache-control": request_cc})
    assert lookup is not None and (lookup.read, lookup.write) == (read, write)


@pytest.mark.parametrize(("status", "headers", "auth", "path", "ttl"), [
    (200, {}, False, "/catalog/a", 300),
    (201, {}, False, "/catalog/a", None),
    (404, {}, False, "/catalog/a", None),
    (200, {"cache-control": "no-store"}, False, "/catalog/a", None),
    (200, {"cache-control": "private, max-age=60"}, False, "/catalog/a", None),
    (200, {"cache-control": "no-cache"}, False, "/catalog/a", None),
    (200, {"cache-control": "max-age=30"}, False, "/catalog/a", 30),
    (200, {"cache-control": "max-age=30, s-maxage=90"}, False, "/catalog/a", 90),
    (200, {"cache-control": "max-age=0"}, False, "/catalog/a", None),
    (200, {"cache-control": "max-age=junk"}, False, "/catalog/a", None),
    (200, {"cache-control": "max-age=9999"}, False, "/catalog/a", 300),
    (200, {"set-cookie": "a=b"}, False, "/catalog/a", None),
    (200, {"vary": "*"}, False, "/catalog/a", None),
    # Authenticated, but the rule does not vary on Authorization: only if the origin says public.
    (200, {}, True, "/catalog/a", None),
    (200, {"cache-control": "public"}, True, "/catalog/a", 300),
    (200, {}, True, "/users/u/settings", 60),
])
def test_store_ttl(status: int, headers: dict[str, str], auth: bool, path: str, ttl: int | None) -> None:
    lookup = POLICY.lookup("GET", path, {"authorization": "x"} if auth else {})
    assert lookup is not None
    assert POLICY.store_ttl(lookup, status, headers, auth, 10) == ttl


def test_too_large_not_stored_and_invalidation() -> None:
    small = CachePolicy(CacheConfig(max_body_bytes=5, rules=[{"path": "/c/**", "ttl_s": 5}]))  # type: ignore[list-item]
    lookup = small.lookup("GET", "/c/x", {})
    assert lookup is not None and small.store_ttl(lookup, 200, {}, False, 6) is None
    assert small.invalidates("PUT", "/c/x?y=1") == lookup.resource
    assert small.invalidates("GET", "/c/x") is None
    assert small.invalidates("DELETE", "/elsewhere") is None


def test_entry_round_trip_keeps_only_replayable_headers() -> None:
    entry = POLICY.entry(200, {":status": "200", "content-type": "application/json", "set-cookie": "a",
                               "content-length": "2", "x-response-time": "3ms", "etag": '"1"'}, b"{}", 100.0)
    assert entry.headers == (("content-type", "application/json"), ("etag", '"1"'))
    decoded = CacheEntry.decode(entry.encode())
    assert decoded == entry
    assert CacheEntry.decode(b"garbage") is None and CacheEntry.decode(b"{}\nbody") is None
    assert hit_headers(entry, 130.9)[-2:] == [("age", "30"), ("x-cache-status", "HIT")]
    assert cache_control('Public, Max-Age="5"') == {"public": "", "max-age": "5"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_memory_cache_ttl_lru_and_invalidate() -> None:
    clock = Clock()
    cache = MemoryCache(max_entries=2, clock=clock)
    await cache.put("k1", "r1", b"v1", ttl_s=10)
    await cache.put("k2", "r1", b"v2", ttl_s=10)
    assert await cache.get("k1") == b"v1"  # k1 is now the most recent
    await cache.put("k3", "r2", b"v3", ttl_s=10)  # evicts k2, the least recent
    assert await cache.get("k2") is None and len(cache) == 2
    assert await cache.invalidate("r1") == 1
    assert await cache.get("k1") is None and await cache.get("k3") == b"v3"
    clock.now = 10.0
    assert await cache.get("k3") is None and len(cache) == 0


async def test_memory_cache_size_follows_every_entry_in_and_out() -> None:
    """cache_size_bytes' source: keys + values held, told as deltas through put, replace, eviction,
    invalidation, expiry and close."""
    clock = Clock()
    deltas: list[int] = []
    cache = MemoryCache(max_entries=2, clock=clock, on_resize=deltas.append)
    await cache.put("k1", "r1", b"1234", ttl_s=10)
    await cache.put("k1", "r1", b"12", ttl_s=10)            # replaced: the old size goes
    assert cache.size_bytes == 4
    await cache.put("k2", "r2", b"123", ttl_s=10)
    await cache.put("k3", "r2", b"1", ttl_s=5)              # evicts k1
    assert cache.size_bytes == 5 + 3
    assert await cache.invalidate("r2") == 2 and cache.size_bytes == 0
    await cache.put("k4", "r3", b"12", ttl_s=5)
    clock.now = 5.0
    assert await cache.get("k4") is None and cache.size_bytes == 0  # expired on read
    await cache.put("k5", "r3", b"1", ttl_s=5)
    await cache.close()
    assert cache.size_bytes == 0 and sum(deltas) == 0


async def test_redis_cache_against_real_redis(redis_server: str) -> None:
    cache = RedisCache(redis_server)
    try:
        await cache.put("t:e:1", "t:r:1", b"one", ttl_s=60)
        await cache.put("t:e:2", "t:r:1", b"two", ttl_s=60)
        await cache.put("t:e:3", "t:r:2", b"three", ttl_s=60)
        assert await cache.get("t:e:1") == b"one"
        assert await cache.invalidate("t:r:1") == 2
        assert await cache.get("t:e:1") is None and await cache.get("t:e:2") is None
        assert await cache.get("t:e:3") == b"three"
        assert await cache.invalidate("t:r:none") == 0
    finally:
        await cache.close()


async def test_redis_down_is_unavailable_not_a_crash() -> None:
    from outrider.process import free_port

    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0")
    calls: list[Any] = [cache.get("k"), cache.put("k", "r", b"v", 1), cache.invalidate("r")]
    try:
        for call in calls:
            with pytest.raises(CacheUnavailable):
                await call
    finally:
        await cache.close()
