"""Where a rate limit decision spends its CPU: cProfile of RateLimitService on the example gateway's limits.

    .venv/bin/python bench/rls_profile.py [--requests 20000] [--top 25]

In process, no gRPC and no Redis (the in-memory store), so what is left is the service's own Python: the
plan cache lookup, key building and planning (keys.py, decision.py plan) for requests it has not seen,
the decision, metrics and the response. Three mixes, each timed (µs per decision, no profiler) and then
profiled: `repeat` (one caller again and again: plan cache hits), `distinct` (a new user every request:
plan cache misses, the key path). Then the cost of a new plan kept in a plan cache the service's size,
under Python's default GC threshold and under outrider.grpc_runtime.GC_THRESHOLD (what serve() sets):
what survives a request is scanned by every young collection.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envoy.service.ratelimit.v3 import rls_pb2

from outrider.config.loader import load_config
from outrider.grpc_runtime import GC_THRESHOLD
from outrider.logs import DecisionLog
from ratelimit_service.backends.memory import MemoryBackend
from ratelimit_service.decision import plan
from ratelimit_service.guard import GuardedBackend
from ratelimit_service.resource import build, payload
from ratelimit_service.service import PLAN_CACHE_ENTRIES, RateLimitService, _inputs


class _Context:
    """What ShouldRateLimitBytes reads of a grpc.aio context."""

    def time_remaining(self) -> float:
        return 1.0

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"{code}: {details}")


def request(user: str, tier: str = "premium") -> bytes:
    """What Envoy sends for a protected route of the example: client address, tier + user, endpoint."""
    out = rls_pb2.RateLimitRequest(domain="outrider")
    for entries in ((("remote_address", "10.1.2.3"),), (("tier", tier), ("user_id", user)),
                    (("endpoint", "/api/v1/search"),)):
        descriptor = out.descriptors.add()
        for key, value in entries:
            descriptor.entries.add(key=key, value=value)
    return out.SerializeToString()


def service(log_decisions: bool) -> RateLimitService:
    config = load_config(ROOT / "examples" / "gateway.yaml")
    data = payload(config)
    rl = data["rate_limits"]
    # High limits: the mixes measure admitted decisions (every counter is still charged), as the RLS bench.
    rl["per_ip"].update(requests_per_unit=1_000_000_000, burst=1_000_000_000)
    rl["per_ip"]["ban"]["after_requests"] = 1_000_000_000
    for windows in rl["tiers"].values():
        for window in windows:
            if not window.get("unlimited"):
                window["requests_per_unit"] = 1_000_000_000
    for endpoint in rl["endpoints"]:
        endpoint["limit"]["requests_per_unit"] = 1_000_000_000
    built = build(data)
    log = DecisionLog("ratelimit_service", enabled=log_decisions, stream=io.StringIO(), max_buffered=1 << 30)
    return RateLimitService(built.settings, GuardedBackend(MemoryBackend(), 1.0), decision_log=log)


async def run(svc: RateLimitService, bodies: list[bytes]) -> float:
    context: Any = _Context()
    call = svc.ShouldRateLimitBytes
    start = time.process_time()
    for body in bodies:
        await call(body, context)
    return (time.process_time() - start) / len(bodies) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    mixes = {
        "repeat": [request("alice")] * args.requests,
        "distinct": [request(f"user-{i}") for i in range(args.requests)],
    }
    for name, bodies in mixes.items():
        asyncio.run(run(service(False), bodies[:2000]))  # warm imports and caches
        us = min(asyncio.run(run(service(False), bodies)) for _ in range(3))
        print(f"\n## {name}: {us:.1f} µs CPU per decision (ShouldRateLimitBytes, in-memory store)\n")
        profiler = cProfile.Profile()
        svc = service(False)
        profiler.enable()
        asyncio.run(run(svc, bodies))
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])
    plan_cache_cost([request(f"user-{i}") for i in range(max(args.requests, 2 * PLAN_CACHE_ENTRIES))])


def plan_cache_cost(bodies: list[bytes]) -> None:
    """µs of CPU per new plan stored in a cache of the service's size, per GC threshold."""
    table = service(False).settings.table
    inputs = [_inputs(rls_pb2.RateLimitRequest.FromString(body)) for body in bodies]
    now_ms = int(time.time() * 1000)

    def fill() -> float:
        cache: dict[bytes, Any] = {}
        start = time.process_time()
        for body, entries in zip(bodies, inputs, strict=True):
            if len(cache) >= PLAN_CACHE_ENTRIES:
                cache.clear()
            cache[body] = plan(table, "outrider", entries, now_ms)
        return (time.process_time() - start) / len(bodies) * 1e6

    gc.collect()
    gc.freeze()  # as serve() does: the inputs above are not what a request leaves behind
    before = gc.get_threshold()
    def decisions() -> float:  # the whole decision, a new caller each time (in-memory store)
        return asyncio.run(run(service(False), bodies))

    print("\n## a new caller: a new plan kept in a plan cache of the service's size\n")
    print("| GC threshold | µs CPU per new plan | µs CPU per decision (distinct) |\n|---|---|---|")
    for threshold in ((700, 10, 10), GC_THRESHOLD, None):
        if threshold is None:
            gc.disable()
        else:
            gc.set_threshold(*threshold)
        per_plan, per_decision = min(fill() for _ in range(3)), min(decisions() for _ in range(2))
        print(f"| {threshold or 'GC off'} | {per_plan:.1f} | {per_decision:.1f} |")
    gc.enable()
    gc.set_threshold(*before)


if __name__ == "__main__":
    main()
