"""Where cache entries live: one interface, an in-memory LRU (default) and Redis (shared by replicas).

Invalidation must hold for an entry's whole lifetime: whatever indexes an entry (its resource's set, the
path index of prefix purges) lives at least as long as the entry, and is written in the same atomic step.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError


class CacheUnavailable(Exception):
    """The backend could not answer; the caller treats it as a miss and does not store."""


class CacheBackend(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, resource: str, path: str, value: bytes, ttl_s: int) -> None: ...
    async def invalidate(self, resource: str) -> int: ...
    async def invalidate_prefix(self, prefix: str) -> int: ...
    async def close(self) -> None: ...


class MemoryCache:
    """An LRU of at most max_entries, with per-entry expiry and a resource → keys index.

    The index has no expiry of its own: a key leaves it only when its entry leaves the cache."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic,
                 on_resize: Callable[[int], None] | None = None) -> None:
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes, str]] = OrderedDict()
        self._by_resource: dict[str, set[str]] = {}
        self._paths: dict[str, str] = {}  # resource → its path (prefix purges)
        # Bytes held (keys and values), told to `on_resize` as deltas (the cache_size_bytes gauge).
        self.size_bytes = 0
        self._on_resize = on_resize

    def _resize(self, delta: int) -> None:
        self.size_bytes += delta
        if self._on_resize is not None:
            self._on_resize(delta)

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return item[1]

    async def put(self, key: str, resource: str, path: str, value: bytes, ttl_s: int) -> None:
        self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, value, resource)
        self._resize(len(key) + len(value))
        self._by_resource.setdefault(resource, set()).add(key)
        self._paths[resource] = path
        while len(self._entries) > self._max:
            self._drop(next(iter(self._entries)))

    async def invalidate(self, resource: str) -> int:
        keys = self._by_resource.pop(resource, set())
        self._paths.pop(resource, None)
        now, live = self._clock(), 0
        for key in keys:
            item = self._entries.pop(key, None)
            if item is not None:
                self._resize(-len(key) - len(item[1]))
            live += item is not None and item[0] > now
        return live

    async def invalidate_prefix(self, prefix: str) -> int:
        # O(resources): a purge is an operator's rare call, lookups stay O(1).
        matched = [r for r, path in self._paths.items() if path.startswith(prefix)]
        return sum([await self.invalidate(r) for r in matched])

    def _drop(self, key: str) -> None:
        item = self._entries.pop(key, None)
        if item is not None:
            self._resize(-len(key) - len(item[1]))
            keys = self._by_resource.get(item[2])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_resource[item[2]]
                    self._paths.pop(item[2], None)

    async def close(self) -> None:
        self._entries.clear()
        self._by_resource.clear()
        self._paths.clear()
        self._resize(-self.size_bytes)


# One write, atomically: the entry, its key in the resource's index, and the resource in the path index.
# Each index is kept at least as long as the longest entry it points to (PTTL compared, never lowered):
# an origin's short max-age written after a long-lived entry of the same resource must not shorten the
# index, or a later write would no longer find (and purge) the long-lived one.
# KEYS: entry, resource index, path index (lex), path expiries; ARGV: value, ttl ms, "path\nresource".
_PUT = """
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('SADD', KEYS[2], KEYS[1])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[3], 0, ARGV[3])
redis.call('ZADD', KEYS[4], 'GT', now + ttl, ARGV[3])
for _, key in ipairs({KEYS[3], KEYS[4]}) do
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
-- Forget a few resources whose every entry has expired (their index is gone too): the path index
-- stays as large as the live cache, at O(1) amortised per write.
local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 16)
if #stale > 0 then
  redis.call('ZREM', KEYS[3], unpack(stale))
  redis.call('ZREM', KEYS[4], unpack(stale))
end
return 1
"""

# Every key of a resource, then the index itself, in one atomic step; the count is of live entries deleted.
_INVALIDATE = """
local keys = redis.call('SMEMBERS', KEYS[1])
local count = 0
for i = 1, #keys, 500 do
  count = count + redis.call('DEL', unpack(keys, i, math.min(i + 499, #keys)))
end
redis.call('DEL', KEYS[1])
return count
"""

# Every resource whose path starts with ARGV[1] (a lexicographic range of the path index), as _INVALIDATE.
_INVALIDATE_PREFIX = """
local members = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[1], '(' .. ARGV[1] .. '\\255')
local count = 0
for _, member in ipairs(members) do
  local cut = string.find(member, '\\n', 1, true)
  local resource = string.sub(member, cut + 1)
  local keys = redis.call('SMEMBERS', resource)
  for i = 1, #keys, 500 do
    count = count + redis.call('DEL', unpack(keys, i, math.min(i + 499, #keys)))
  end
  redis.call('DEL', resource)
end
for i = 1, #members, 500 do
  local part = {unpack(members, i, math.min(i + 499, #members))}
  redis.call('ZREM', KEYS[1], unpack(part))
  redis.call('ZREM', KEYS[2], unpack(part))
end
return count
"""


class RedisCache:
    """Entries as strings with a TTL; a set per resource indexes its entries; a sorted set of every cached
    path (`<prefix>paths`, members `path\\nresource`, all score 0) answers prefix purges as a range."""

    def __init__(self, url: str, key_prefix: str = "outrider:cache:", timeout_s: float = 0.05) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._paths = f"{key_prefix}paths"
        self._expiries = f"{key_prefix}paths:exp"
        self._put = self._redis.register_script(_PUT)
        self._invalidate = self._redis.register_script(_INVALIDATE)
        self._invalidate_prefix = self._redis.register_script(_INVALIDATE_PREFIX)

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from None
        return value if isinstance(value, bytes) or value is None else str(value).encode()

    async def put(self, key: str, resource: str, path: str, value: bytes, ttl_s: int) -> None:
        try:
            await self._put(keys=[key, resource, self._paths, self._expiries],
                            args=[value, ttl_s * 1000, f"{path}\n{resource}"])
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from None

    async def invalidate(self, resource: str) -> int:
        try:
            return int(await self._invalidate(keys=[resource]))
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from None

    async def invalidate_prefix(self, prefix: str) -> int:
        try:
            return int(await self._invalidate_prefix(keys=[self._paths, self._expiries], args=[prefix]))
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from None

    async def close(self) -> None:
        await self._redis.aclose()
