"""Bounded LRU cache of verified identities, keyed on the SHA-256 of the token (never the token)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from ext_authz.jwt_verifier import Identity


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
        key = hashlib.sha256(token.encode()).digest()
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, token: str, identity: Identity, now: float) -> None:
        deadline = min(identity.expires_at, now + self._max_ttl_s)
        if now >= deadline or self._max_entries == 0:
            return
        key = hashlib.sha256(token.encode()).digest()
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
