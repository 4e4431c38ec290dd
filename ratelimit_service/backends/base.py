"""The backend interface: evaluate every counter of one request atomically, in one call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from ratelimit_service.algorithms import Outcome


class Check(NamedTuple):
    """One limit window to test and, if the request is admitted, to charge.

    keys: (counter,) for fixed window and token bucket; (current, previous) for sliding window.
    extra: the window start in ms (fixed, sliding, ban) or the bucket's burst (token bucket).
    A ban check (limits.BAN) has keys (ban, counter) and lasts ban_ms; its outcome when over has
    `remaining` 1 when this very call started the ban, 0 when the address was banned already.
    """

    keys: tuple[str, ...]
    algorithm: int
    limit: int
    window_ms: int
    hits: int
    extra: int
    shadow: bool
    ban_ms: int = 0


# What a request charges (envoyproxy/ratelimit, src/redis/fixed_cache_impl.go DoLimit):
# CHARGE_ALL: every counter counts the request, whatever the others decide (the reference's default: each
#   descriptor's INCRBY runs even when another is over). A fixed window counts even its own refused
#   request (INCRBY then compare); a sliding window or token bucket (outrider's) only what it admits.
# CHARGE_UNLESS_OVER: nothing is charged when any check is over, shadow ones included
#   (STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT, rate_limits.stop_increment_when_over_limit).
# CHARGE_NONE: read only (the same option when a counter of the request is already known over).
# A ban check (limits.BAN) counts every request in every mode: refused requests are what a ban is for.
CHARGE_ALL, CHARGE_UNLESS_OVER, CHARGE_NONE = 0, 1, 2


class BackendError(Exception):
    """The store could not answer (down, slow, refused); the service answers in its failure mode."""


class Backend(Protocol):
    async def evaluate(self, tag: str, checks: Sequence[Check], now_ms: int,
                       charge: int = CHARGE_ALL) -> list[Outcome]:
        """Outcomes in check order (each computed before any charge); charges them as `charge` says.

        `tag` groups the keys of one request (the domain): a cluster backend keeps them in one slot.
        Raises BackendError.
        """
        ...

    async def bans(self, tag: str) -> list[tuple[str, int]]:
        """Every ban in force (unprefixed ban key, ms left). Raises BackendError."""
        ...

    async def unban(self, tag: str, key: str) -> bool:
        """Lift one ban (unprefixed ban key); False when there was none. Raises BackendError."""
        ...

    async def close(self) -> None: ...
