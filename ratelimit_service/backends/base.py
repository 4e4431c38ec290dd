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


class BackendError(Exception):
    """The store could not answer (down, slow, refused); the service answers in its failure mode."""


class Backend(Protocol):
    async def evaluate(self, tag: str, checks: Sequence[Check], now_ms: int) -> list[Outcome]:
        """Outcomes in check order. Charges all checks, or none when a non-shadow check is over.

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
