"""Counters in this process's memory: for `make run` and single-replica setups (not shared)."""

from __future__ import annotations

from collections.abc import Sequence

from ratelimit_service.algorithms import (
    Outcome,
    fixed_window,
    sliding_window,
    token_bucket,
    token_bucket_ttl_ms,
)
from ratelimit_service.backends.base import Check
from ratelimit_service.limits import FIXED, SLIDING

SWEEP_EVERY_MS = 1000


class MemoryBackend:
    """Same semantics as the Redis script; atomic because it never awaits inside `evaluate`."""

    infallible = True

    def __init__(self) -> None:
        # key → (value, expires_at_ms); value is a count, or (tokens, updated_ms) for a bucket.
        self._data: dict[str, tuple[object, int]] = {}
        self._next_sweep = 0

    def __len__(self) -> int:
        return len(self._data)

    def _get(self, key: str, now_ms: int) -> object | None:
        item = self._data.get(key)
        if item is None or item[1] <= now_ms:
            return None
        return item[0]

    def _sweep(self, now_ms: int) -> None:
        if now_ms < self._next_sweep:
            return
        self._next_sweep = now_ms + SWEEP_EVERY_MS
        for key in [k for k, (_, expires) in self._data.items() if expires <= now_ms]:
            del self._data[key]

    async def evaluate(self, tag: str, checks: Sequence[Check], now_ms: int) -> list[Outcome]:
        return self.evaluate_now(checks, now_ms)

    def evaluate_now(self, checks: Sequence[Check], now_ms: int) -> list[Outcome]:
        self._sweep(now_ms)
        outcomes: list[Outcome] = []
        commits: list[tuple[str, object, int]] = []
        blocked = False
        for c in checks:
            if c.algorithm == FIXED:
                count = self._get(c.keys[0], now_ms) or 0
                assert isinstance(count, int)
                outcome = fixed_window(count, c.limit, c.hits, c.extra, c.window_ms, now_ms)
                commits.append((c.keys[0], count + c.hits, now_ms + c.window_ms))
            elif c.algorithm == SLIDING:
                current = self._get(c.keys[0], now_ms) or 0
                previous = self._get(c.keys[1], now_ms) or 0
                assert isinstance(current, int) and isinstance(previous, int)
                outcome = sliding_window(current, previous, c.limit, c.hits, c.extra, c.window_ms, now_ms)
                commits.append((c.keys[0], current + c.hits, now_ms + 2 * c.window_ms))
            else:
                state = self._get(c.keys[0], now_ms)
                tokens, updated = state if isinstance(state, tuple) else (None, None)
                over, remaining, reset, left = token_bucket(tokens, updated, c.limit, c.window_ms, c.extra,
                                                            c.hits, now_ms)
                outcome = (over, remaining, reset)
                commits.append((c.keys[0], (left, now_ms),
                                now_ms + token_bucket_ttl_ms(c.limit, c.window_ms, c.extra)))
            if outcome[0] and not c.shadow:
                blocked = True
            outcomes.append(outcome)
        if not blocked:
            for (key, value, expires), c in zip(commits, checks, strict=True):
                if c.hits:
                    self._data[key] = (value, expires)
        return outcomes

    async def close(self) -> None:
        self._data.clear()
