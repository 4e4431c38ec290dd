"""Counters in this process's memory: for `make run` and single-replica setups (not shared), bounded in size."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from ratelimit_service.algorithms import (
    Outcome,
    ban,
    fixed_window,
    sliding_window,
    token_bucket,
    token_bucket_ttl_ms,
)
from ratelimit_service.backends.base import CHARGE_ALL, CHARGE_UNLESS_OVER, Check
from ratelimit_service.limits import BAN, FIXED, SLIDING
from ratelimit_service.metrics import RateLimitMetrics, service_metrics

DEFAULT_MAX_KEYS = 100_000
# Expired counters removed per sweep, one sweep per millisecond at most: far more than are written per
# millisecond at this service's request rates, and small enough never to pause a request.
SWEEP_BATCH = 64
# Evictions per call at most (more only when max_keys was just lowered): the cap is reached gradually.
EVICT_BATCH = 256
REPORT_EVERY_MS = 100

Store = OrderedDict[str, tuple[object, int]]


class MemoryBackend:
    """Same semantics as the Redis script; atomic because it never awaits inside `evaluate`.

    Counters are kept per time-to-live (`ttl`: a window, two windows for a sliding window's current key,
    the refill time of a bucket). Every write sets expiry = now + ttl and moves the key to the end, so in
    one ttl class write order is expiry order: the front is the next to expire and the least recently
    charged. That makes both removals O(1) without scanning: expired counters leave from the fronts, a
    few per call (never an O(n) sweep); past `max_keys`, an expired front goes first, else the least
    recently charged front of all classes. There are as many classes as distinct windows in the config.
    """

    infallible = True

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS, metrics: RateLimitMetrics | None = None) -> None:
        self.max_keys = max_keys
        self._classes: dict[int, Store] = {}
        self._size = 0
        # Ban key → end (ms). Apart from the counters: a ban is never evicted early, and there are at most
        # as many as addresses that each sent `after_requests` requests (bounded below all the same).
        self._bans: dict[str, int] = {}
        self._last_sweep = -1
        self._next_report = 0
        self.evictions = 0
        m = metrics or service_metrics()
        self._keys_gauge = m.memory_keys
        self._evicted = m.memory_evictions

    def __len__(self) -> int:
        return self._size

    def _store(self, ttl: int) -> Store:
        store = self._classes.get(ttl)
        if store is None:
            store = self._classes[ttl] = OrderedDict()
        return store

    def _get(self, store: Store, key: str, now_ms: int) -> object | None:
        item = store.get(key)
        if item is None:
            return None
        if item[1] <= now_ms:
            del store[key]  # expired: gone now rather than at the next sweep
            self._size -= 1
            return None
        return item[0]

    def _sweep(self, now_ms: int) -> None:
        """Drop up to SWEEP_BATCH expired counters from the class fronts (each front expires first)."""
        if now_ms == self._last_sweep:
            return
        self._last_sweep = now_ms
        budget = SWEEP_BATCH
        for store in self._classes.values():
            while store and budget:
                key, (_, expires) = next(iter(store.items()))
                if expires > now_ms:
                    break
                del store[key]
                self._size -= 1
                budget -= 1
        if now_ms >= self._next_report:
            self._next_report = now_ms + REPORT_EVERY_MS
            self._keys_gauge.set(self._size)

    def _evict(self, now_ms: int) -> None:
        """Back under max_keys: an expired counter if a front has one, else the least recently charged."""
        evicted = 0
        for _ in range(min(self._size - self.max_keys, EVICT_BATCH)):
            oldest: Store | None = None
            oldest_written = 0
            for ttl, store in self._classes.items():
                if not store:
                    continue
                expires = next(iter(store.values()))[1]
                if expires <= now_ms:
                    oldest = store
                    break
                written = expires - ttl
                if oldest is None or written < oldest_written:
                    oldest, oldest_written = store, written
            if oldest is None:
                break
            _, (_, expires) = oldest.popitem(last=False)
            self._size -= 1
            if expires > now_ms:
                evicted += 1
        if evicted:
            self.evictions += evicted
            self._evicted.inc(evicted)
        self._keys_gauge.set(self._size)  # at the cap: worth saying now, whatever the clock does

    async def evaluate(self, tag: str, checks: Sequence[Check], now_ms: int,
                       charge: int = CHARGE_ALL) -> list[Outcome]:
        return self.evaluate_now(checks, now_ms, charge)

    def evaluate_now(self, checks: Sequence[Check], now_ms: int, charge: int = CHARGE_ALL) -> list[Outcome]:
        self._sweep(now_ms)
        outcomes: list[Outcome] = []
        commits: list[tuple[Store, str, object, int]] = []
        any_over = False
        for c in checks:
            if c.algorithm == FIXED:
                store = self._store(c.window_ms)
                count = self._get(store, c.keys[0], now_ms) or 0
                assert isinstance(count, int)
                outcome = fixed_window(count, c.limit, c.hits, c.extra, c.window_ms, now_ms)
                commits.append((store, c.keys[0], count + c.hits, now_ms + c.window_ms))
            elif c.algorithm == SLIDING:
                # The previous window's key was this class's current key one window ago.
                store = self._store(2 * c.window_ms)
                current = self._get(store, c.keys[0], now_ms) or 0
                previous = self._get(store, c.keys[1], now_ms) or 0
                assert isinstance(current, int) and isinstance(previous, int)
                outcome = sliding_window(current, previous, c.limit, c.hits, c.extra, c.window_ms, now_ms)
                commits.append((store, c.keys[0], current + c.hits, now_ms + 2 * c.window_ms))
            elif c.algorithm == BAN:
                until = self._bans.get(c.keys[0], 0)
                store = self._store(c.window_ms)
                count = self._get(store, c.keys[1], now_ms) or 0
                assert isinstance(count, int)
                outcome, starts = ban(until - now_ms, count, c.limit, c.hits, c.extra, c.window_ms, c.ban_ms, now_ms)
                if starts:
                    self._ban(c.keys[0], now_ms + c.ban_ms, now_ms)
                    if store.pop(c.keys[1], None) is not None:
                        self._size -= 1
                elif not outcome[0] and c.hits:
                    # Counted whatever the other checks decide: refused requests are what a ban is for.
                    before = len(store)
                    store[c.keys[1]] = (count + c.hits, now_ms + c.window_ms)
                    store.move_to_end(c.keys[1])
                    self._size += len(store) - before
                commits.append((store, "", None, 0))  # nothing more to write on admission
            else:
                ttl = token_bucket_ttl_ms(c.limit, c.window_ms, c.extra)
                store = self._store(ttl)
                state = self._get(store, c.keys[0], now_ms)
                tokens, updated = state if isinstance(state, tuple) else (None, None)
                over, remaining, reset, left = token_bucket(tokens, updated, c.limit, c.window_ms, c.extra,
                                                            c.hits, now_ms)
                outcome = (over, remaining, reset)
                commits.append((store, c.keys[0], (left, now_ms), now_ms + ttl))
            any_over = any_over or outcome[0]
            outcomes.append(outcome)
        if charge == CHARGE_ALL or (charge == CHARGE_UNLESS_OVER and not any_over):
            for (store, key, value, expires), c, (over, _, _) in zip(commits, checks, outcomes, strict=True):
                # A fixed window counts its own refused request too (envoyproxy's INCRBY, then compare).
                if c.hits and key and (not over or c.algorithm == FIXED):
                    before = len(store)
                    store[key] = (value, expires)
                    store.move_to_end(key)  # write order = expiry order within the class
                    self._size += len(store) - before
            if self._size > self.max_keys:
                self._evict(now_ms)
        return outcomes

    def _ban(self, key: str, until: int, now_ms: int) -> None:
        if len(self._bans) >= self.max_keys:
            for old in [k for k, end in self._bans.items() if end <= now_ms]:
                del self._bans[old]
            if len(self._bans) >= self.max_keys:
                self._bans.pop(next(iter(self._bans)))  # the oldest ban goes first rather than memory growing
        self._bans[key] = until

    async def bans(self, tag: str, now_ms: int | None = None) -> list[tuple[str, int]]:
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        for old in [k for k, end in self._bans.items() if end <= now]:
            del self._bans[old]
        return [(key, end - now) for key, end in self._bans.items()]

    async def unban(self, tag: str, key: str) -> bool:
        end = self._bans.pop(key, None)
        return end is not None and end > int(time.time() * 1000)

    async def close(self) -> None:
        self._classes.clear()
        self._bans.clear()
        self._size = 0
