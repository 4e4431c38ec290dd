"""A real rate limit service process whose decisions cost a fixed CPU time: overload on demand (test helper).

`python -m tests.ratelimit.overload_server --port P --metrics-port M --burn-ms 2 --min-time-left-ms 100`
serves ShouldRateLimit with the service's own code (RateLimitService, its gRPC adapter and overload checks)
on a store that burns `burn-ms` of CPU per decision, so its capacity is known: about 1000 / burn-ms
decisions a second. Domain `svc`, descriptor `user` with a limit no test reaches.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import uvloop

from outrider.grpc_runtime import serve
from outrider.metrics import start_metrics_server
from ratelimit_service.algorithms import Outcome
from ratelimit_service.backends.base import Check
from ratelimit_service.backends.memory import MemoryBackend
from ratelimit_service.guard import GuardedBackend
from ratelimit_service.resource import build
from ratelimit_service.service import SERVICE, RateLimitService, add_to_server


class Burning:
    """The memory store behind a busy loop: the event loop is held as a slow decision would hold it."""

    infallible = True

    def __init__(self, burn_s: float) -> None:
        self._burn_s = burn_s
        self._memory = MemoryBackend()

    async def evaluate(self, tag: str, checks: Sequence[Check], now_ms: int, charge: int = 0) -> list[Outcome]:
        until = time.perf_counter() + self._burn_s
        while time.perf_counter() < until:
            pass
        return self._memory.evaluate_now(checks, now_ms, charge)

    async def close(self) -> None: ...


async def main(args: argparse.Namespace) -> None:
    overload: dict[str, int] = {"max_in_flight": args.max_in_flight}
    if args.min_time_left_ms is not None:
        overload["min_time_left_ms"] = args.min_time_left_ms
    built = build({
        "rate_limits": {"domain": "svc", "failure_mode": "allow", "overload": overload},
        "files": [{"name": "overload.yaml", "config": {"domain": "svc", "descriptors": [
            {"key": "user", "rate_limit": {"unit": "second", "requests_per_unit": 1_000_000_000}}]}}],
    })
    service = RateLimitService(built.settings, GuardedBackend(Burning(args.burn_ms / 1000), 1.0))
    start_metrics_server("127.0.0.1", args.metrics_port)
    await serve(lambda server: add_to_server(service, server), "127.0.0.1", args.port, (SERVICE,))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--burn-ms", type=float, default=2.0)
    parser.add_argument("--min-time-left-ms", type=int, default=None)
    parser.add_argument("--max-in-flight", type=int, default=1024)
    uvloop.run(main(parser.parse_args()))
