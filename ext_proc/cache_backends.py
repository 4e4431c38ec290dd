"""Where cache entries live: one interface, an in-memory LRU (default) and Redis (shared by replicas)."""

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
    async def put(self, key: str, resource: str, value: bytes, ttl_s: int) -> None: ...
    async def invalidate(self, resource: str) -> int: ...
    async def close(self) -> None: ...


class MemoryCache:
    """An LRU of at most max_entries, with per-entry expiry and a resource → keys index."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic,
                 on_resize: Callable[[int], None] | None = None) -> None:
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes, str]] = OrderedDict()
        self._by_resource: dict[str, set[str]] = {}
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

    async def put(self, key: str, resource: str, value: bytes, ttl_s: int) -> None:
        self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, value, resource)
        self._resize(len(key) + len(value))
        self._by_resource.setdefault(resource, set()).add(key)
        while len(self._entries) > self._max:
            self._drop(next(iter(self._entries)))

    async def invalidate(self, resource: str) -> int:
        keys = self._by_resource.pop(resource, set())
        for key in keys:
            item = self._entries.pop(key, None)
            if item is not None:
                self._resize(-len(key) - len(item[1]))
        return len(keys)

    def _drop(self, key: str) -> None:
        item = self._entries.pop(key, None)
        if item is not None:
            self._resize(-len(key) - len(item[1]))
            keys = self._by_resource.get(item[2])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_resource[item[2]]

    async def close(self) -> None:
        self._entries.clear()
        self._by_resource.clear()
        self._resize(-self.size_bytes)


# Every key of a resource, then the index itself, in one atomic step.
_INVALIDATE = """
local keys = redis.call('SMEMBERS', KEYS[1])
for i = 1, #keys, 500 do
  redis.call('DEL', unpack(keys, i, math.min(i + 499, #keys)))
end
redis.call('DEL', KEYS[1])
return #keys
"""


class RedisCache:
    """Entries as strings with a TTL; a set per resource indexes its entries for invalidation."""

    def __init__(self, url: str, timeout_s: float = 0.05) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._invalidate = self._redis.register_script(_INVALIDATE)

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from None
        return value if isinstance(value, bytes) or value is None else str(value).encode()

    async def put(self, key: str, resource: str, value: bytes, ttl_s: int) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(key, value, ex=ttl_s)
                pipe.sadd(resource, key)
                # Entries of one resource share a rule, hence a TTL: the index lives as long as they do.
                pipe.expire(resource, ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from None

    async def invalidate(self, resource: str) -> int:
        try:
            return int(await self._invalidate(keys=[resource]))
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from None

    async def close(self) -> None:
        await self._redis.aclose()
