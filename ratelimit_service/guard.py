"""The store behind a time budget and a breaker: failures answer at once, and recovery is automatic."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from ratelimit_service.algorithms import Outcome
from ratelimit_service.backends.base import CHARGE_ALL, Backend, BackendError, Check
from ratelimit_service.metrics import RateLimitMetrics, service_metrics

log = logging.getLogger("ratelimit_service.guard")


class GuardedBackend:
    """Calls the backend within `budget_s`; after a failure, skips it for a growing backoff.

    While the breaker is open every request fails fast (None → the failure mode); after the backoff one
    request probes the store, and a success closes the breaker.
    """

    def __init__(self, backend: Backend, budget_s: float, clock: Callable[[], float] = time.monotonic,
                 min_backoff_s: float = 0.05, max_backoff_s: float = 2.0,
                 metrics: RateLimitMetrics | None = None) -> None:
        self.backend = backend
        self._budget = budget_s
        self._clock = clock
        self._min = min_backoff_s
        self._max = max_backoff_s
        self._backoff = 0.0
        self._retry_at = 0.0
        self._probing = False
        errors = (metrics or service_metrics()).backend_errors
        self._error_children = {k: errors.labels(kind=k) for k in ("timeout", "error", "skipped")}
        # An in-process store cannot be slow or down: no timer per call.
        self._infallible = bool(getattr(backend, "infallible", False))

    @property
    def healthy(self) -> bool:
        return self._backoff == 0.0

    async def evaluate(self, tag: str, checks: Sequence[Check], now_ms: int,
                       charge: int = CHARGE_ALL) -> list[Outcome] | None:
        """The outcomes, or None when the store failed or is known down; never raises."""
        if self._infallible:
            return await self.backend.evaluate(tag, checks, now_ms, charge)
        if self._backoff:
            if self._probing or self._clock() < self._retry_at:
                self._error_children["skipped"].inc()
                return None
            self._probing = True
        try:
            async with asyncio.timeout(self._budget):
                outcomes = await self.backend.evaluate(tag, checks, now_ms, charge)
        except TimeoutError:
            self._fail("timeout", f"no answer within {self._budget * 1000:.0f} ms")
            return None
        except BackendError as exc:
            self._fail("error", str(exc))
            return None
        except Exception as exc:  # a bug in a backend must not surface as an RPC error
            log.exception("backend raised")
            self._fail("error", repr(exc))
            return None
        finally:
            self._probing = False
        if self._backoff:
            log.info("rate limit store is back")
            self._backoff = 0.0
        return outcomes

    def _fail(self, kind: str, reason: str) -> None:
        self._error_children[kind].inc()
        first = self._backoff == 0.0
        self._backoff = self._min if first else min(self._max, self._backoff * 2)
        self._retry_at = self._clock() + self._backoff
        if first:
            log.warning("rate limit store failed; answering in the failure mode",
                        extra={"kind": kind, "reason": reason})
