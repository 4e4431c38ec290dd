"""TokenCache: hits, expiry at exp or max TTL, LRU bound, clear, and no token text stored."""

from __future__ import annotations

import pytest

from ext_authz.jwt_verifier import Identity
from ext_authz.token_cache import TokenCache

NOW = 1_700_000_000.0


def identity(user: str = "u1", expires_at: float = NOW + 600) -> Identity:
    return Identity(
        user_id=user, email=None, roles=("user",), tier="free", expires_at=expires_at,
        issuer="https://issuer.example.com", provider="main", kid="k1",
    )


def test_hit_returns_the_stored_identity() -> None:
    cache = TokenCache()
    ident = identity()
    cache.put("tok-a", ident, NOW)
    assert cache.get("tok-a", NOW + 1) is ident
    assert cache.get("tok-b", NOW + 1) is None
    assert len(cache) == 1


@pytest.mark.parametrize(
    ("expires_at", "max_ttl", "get_at", "hit"),
    [
        (NOW + 600, 300.0, NOW + 299.999, True),
        (NOW + 600, 300.0, NOW + 300, False),  # inserted + max_ttl
        (NOW + 100, 300.0, NOW + 99.999, True),
        (NOW + 100, 300.0, NOW + 100, False),  # token exp comes first
        (NOW + 100, 300.0, NOW + 5000, False),
    ],
    ids=["before-ttl", "at-ttl", "before-exp", "at-exp", "long-after"],
)
def test_expiry(expires_at: float, max_ttl: float, get_at: float, hit: bool) -> None:
    cache = TokenCache(max_ttl_s=max_ttl)
    cache.put("tok", identity(expires_at=expires_at), NOW)
    assert (cache.get("tok", get_at) is not None) is hit
    if not hit:
        assert len(cache) == 0  # expired entries are dropped, not kept around


def test_already_expired_identity_is_not_stored() -> None:
    cache = TokenCache()
    cache.put("tok", identity(expires_at=NOW), NOW)
    assert len(cache) == 0


def test_bounded_with_lru_eviction() -> None:
    cache = TokenCache(max_entries=3)
    for name in ("a", "b", "c"):
        cache.put(name, identity(name), NOW)
    assert cache.get("a", NOW) is not None  # a is now most recently used
    cache.put("d", identity("d"), NOW)  # evicts b, the least recently used
    assert len(cache) == 3
    assert cache.get("b", NOW) is None
    assert [cache.get(n, NOW) is not None for n in ("a", "c", "d")] == [True, True, True]
    for i in range(100):
        cache.put(f"flood-{i}", identity(), NOW)
    assert len(cache) == 3


def test_put_again_refreshes_entry_without_growing() -> None:
    cache = TokenCache(max_entries=2)
    cache.put("a", identity("old"), NOW)
    cache.put("a", identity("new"), NOW)
    assert len(cache) == 1
    got = cache.get("a", NOW)
    assert got is not None and got.user_id == "new"


def test_clear() -> None:
    cache = TokenCache()
    cache.put("a", identity(), NOW)
    cache.put("b", identity(), NOW)
    cache.clear()
    assert len(cache) == 0
    assert cache.get("a", NOW) is None


def test_zero_entries_disables_and_negative_is_refused() -> None:
    cache = TokenCache(max_entries=0)
    cache.put("a", identity(), NOW)
    assert cache.get("a", NOW) is None
    with pytest.raises(ValueError):
        TokenCache(max_entries=-1)


def test_token_text_is_not_kept() -> None:
    cache = TokenCache()
    token = "eyJhbGciOiJSUzI1NiJ9.secret-payload.sig"
    cache.put(token, identity(), NOW)
    stored_keys = list(cache._entries)  # white-box: the map holds digests only
    assert all(isinstance(k, bytes) and len(k) == 32 for k in stored_keys)
    assert token.encode() not in stored_keys
