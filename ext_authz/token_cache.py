"""Bounded LRU caches keyed on the SHA-256 of the token (never the token): verified identities, refused tokens."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from ext_authz.jwt_verifier import Identity


def token_digest(token: str) -> bytes:
    """The cache key of a token; computed once per Check and shared by both caches."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenCache:
    """Skips signature checks for tokens seen recently; entries die at exp or after max_ttl_s."""

    __slots__ = ("_entries", "_max_entries", "_max_ttl_s")

    def __init__(self, max_entries: int = 10_000, max_ttl_s: float = 300.0) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0 (0 disables the cache)")
        if max_ttl_s < 0:
            raise ValueError("max_ttl_s must be >= 0")
        self._max_entries = max_entries
        self._max_ttl_s = max_ttl_s
        # digest -> (identity, deadline); deadline = min(exp, inserted + max_ttl) computed once at put.
        self._entries: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()

    def get(self, token: str, now: float) -> Identity | None:
        return self.get_digest(token_digest(token), now)

    def put(self, token: str, identity: Identity, now: float) -> None:
        self.put_digest(token_digest(token), identity, now)

    def get_digest(self, key: bytes, now: float) -> Identity | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put_digest(self, key: bytes, identity: Identity, now: float) -> None:
        deadline = min(identity.expires_at, now + self._max_ttl_s)
        if now >= deadline or self._max_entries == 0:
            return
        entries = self._entries
        entries[key] = (identity, deadline)
        entries.move_to_end(key)
        # Evicting the least recently used keeps memory bounded under a flood of distinct valid tokens.
        while len(entries) > self._max_entries:
            entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything; called when any provider's keys change (a revoked key must stop working)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class NegativeCache:
    """Tokens refused recently (digest -> reason until a deadline): a replayed bad token costs no verification.

    Only refusals that time cannot undo belong here (a bad signature, an expired token); the caller
    leaves out the ones that may become valid (nbf/iat in the future, a key not loaded yet). Cleared
    when keys change, since a token refused for want of its key may verify under the new set.
    """

    __slots__ = ("_entries", "_max_entries", "_ttl_s")

    def __init__(self, max_entries: int = 10_000, ttl_s: float = 60.0) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0 (0 disables the cache)")
        if ttl_s < 0:
            raise ValueError("ttl_s must be >= 0")
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def get(self, key: bytes, now: float) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._entries[key]
            return None
        return entry[0]

    def put(self, key: bytes, reason: str, now: float) -> None:
        if self._max_entries == 0 or self._ttl_s == 0:
            return
        entries = self._entries
        entries[key] = (reason, now + self._ttl_s)
        entries.move_to_end(key)
        # Oldest first: a flood of distinct bad tokens pushes out its own earlier ones, memory stays bounded.
        while len(entries) > self._max_entries:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
