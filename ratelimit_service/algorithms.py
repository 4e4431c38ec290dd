"""The three limit algorithms as pure arithmetic (the Redis Lua script computes exactly the same).

Times are integer milliseconds. Each function returns (over, remaining, reset_ms) and the state to store
if the request is admitted; what the caller commits is its charging mode's (backends/base.py CHARGE_*).

Sliding window (weighted two-window counter): the count in the trailing window is estimated as
    previous_window_count * (1 - elapsed_in_current / window) + current_window_count.
Error bound: it is exact when the previous window's requests were spread evenly; in the worst case
(all previous-window requests at its very end) a trailing window of length W can hold up to
L + f * previous_count <= L * (1 + f) requests, f being the part of the previous window still overlapped
(< 1), so strictly under 2L; no aligned window (a fixed-window bucket) ever exceeds L. It can also
under-admit by the same amount when the previous window's requests came early.
"""

from __future__ import annotations

import math

Outcome = tuple[bool, int, int]


def fixed_window(count: int, limit: int, hits: int, window_start_ms: int, window_ms: int,
                 now_ms: int) -> Outcome:
    reset = window_start_ms + window_ms - now_ms
    if count + hits > limit:
        return True, max(0, limit - count), reset
    return False, limit - count - hits, reset


def sliding_window(current: int, previous: int, limit: int, hits: int, window_start_ms: int,
                   window_ms: int, now_ms: int) -> Outcome:
    elapsed = now_ms - window_start_ms
    estimate = previous * (window_ms - elapsed) / window_ms + current
    if estimate + hits <= limit:
        return False, math.floor(limit - estimate - hits), window_ms - elapsed
    return True, max(0, math.floor(limit - estimate)), sliding_retry_ms(current, previous, limit, hits,
                                                                         elapsed, window_ms)


def sliding_retry_ms(current: int, previous: int, limit: int, hits: int, elapsed: int, window_ms: int) -> int:
    """When the estimate will have dropped enough to admit `hits` (the previous window's weight shrinks)."""
    if hits > limit:
        return window_ms
    if current + hits <= limit and previous > 0:
        wait = window_ms - elapsed - (limit - hits - current) * window_ms / previous
        return max(1, math.ceil(wait))
    # The current window alone is too full: wait for it to become the previous one, then for its weight.
    wait = window_ms - elapsed
    if current > 0:
        wait += math.ceil(window_ms * (1 - (limit - hits) / current))
    return max(1, wait)


def token_bucket(tokens: float | None, updated_ms: int | None, rate: int, window_ms: int, burst: int,
                 hits: int, now_ms: int) -> tuple[bool, int, int, float]:
    """A bucket of `burst` tokens refilled at rate/window; returns the outcome and the tokens left."""
    per_ms = rate / window_ms
    if tokens is None or updated_ms is None:
        tokens = float(burst)
    else:
        tokens = min(float(burst), tokens + max(0, now_ms - updated_ms) * per_ms)
    if tokens < hits:
        wait = window_ms if hits > burst else math.ceil((hits - tokens) / per_ms)
        return True, math.floor(tokens), max(1, wait), tokens
    left = tokens - hits
    return False, math.floor(left), math.ceil((burst - left) / per_ms), left


def token_bucket_ttl_ms(rate: int, window_ms: int, burst: int) -> int:
    """An untouched bucket is full again after this long, so its key may go (1 s slack for clock skew)."""
    return math.ceil(burst * window_ms / rate) + 1000


def ban(ban_left_ms: int, count: int, limit: int, hits: int, window_start_ms: int, window_ms: int,
        ban_ms: int, now_ms: int) -> tuple[Outcome, bool]:
    """The automatic ban: (outcome, whether this call starts a ban).

    `ban_left_ms` > 0: the address is banned, refused until the ban ends (remaining 0). Else `count`
    (this window's requests so far, refused ones included) plus `hits` past `limit` starts a ban of
    `ban_ms` (remaining 1 flags the new ban to the caller); otherwise the count goes up by `hits` whatever
    the other checks decide, and the outcome says how many more requests the window takes.
    """
    if ban_left_ms > 0:
        return (True, 0, ban_left_ms), False
    if count + hits > limit:
        return (True, 1, ban_ms), True
    return (False, limit - count - hits, window_start_ms + window_ms - now_ms), False
