"""The in-memory store and the service's caches stay bounded: a cap with expired-first then LRU eviction,
an incremental sweep, and 200k distinct clients through the service API levelling off (issue 11: the
memory grew with every distinct key, 336 MB after 105k keys)."""

from __future__ import annotations

import gc
import time
from typing import Any

import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from prometheus_client import REGISTRY

from ratelimit_service.backends.base import Check
from ratelimit_service.backends.memory import SWEEP_BATCH, MemoryBackend
from ratelimit_service.guard import GuardedBackend
from ratelimit_service.limits import FIXED, MEMO_ENTRIES, TOKEN
from ratelimit_service.resource import build
from ratelimit_service.service import PLAN_CACHE_ENTRIES, RateLimitService

T0 = 1_800_000_000_000
MINUTE = 60_000


def fixed(key: str, window_ms: int = MINUTE) -> Check:
    return Check((key,), FIXED, 100, window_ms, 1, T0, False)


def evictions() -> float:
    return REGISTRY.get_sample_value("rate_limit_memory_evictions_total") or 0.0


def test_past_the_cap_the_least_recently_charged_counter_goes() -> None:
    store = MemoryBackend(max_keys=3)
    before = evictions()
    for key in ("a", "b", "c"):
        store.evaluate_now([fixed(key)], T0)
    store.evaluate_now([fixed("a")], T0 + 1)  # a charged again: b is now the least recent
    store.evaluate_now([fixed("d")], T0 + 2)
    assert len(store) == 3
    assert store.evaluate_now([fixed("a")], T0 + 3)[0][1] == 97  # a kept its count (2 before, now 3)
    assert store.evaluate_now([fixed("b")], T0 + 4)[0][1] == 99  # b restarted: it was evicted
    assert evictions() - before == 2  # b, then c to make room for b again


def test_expired_counters_go_before_any_live_one() -> None:
    store = MemoryBackend(max_keys=4)
    before = evictions()
    store.evaluate_now([fixed("long", window_ms=3_600_000)], T0)  # the oldest, but alive for an hour
    for key in ("s1", "s2", "s3"):
        store.evaluate_now([fixed(key, window_ms=1000)], T0 + 1)
    # 2 s later the one-second counters are expired: the cap takes them, not the hour's counter.
    for key in ("n1", "n2", "n3"):
        store.evaluate_now([fixed(key)], T0 + 2000)
    assert len(store) == 4
    assert evictions() == before  # nothing alive was dropped
    assert store.evaluate_now([fixed("long", window_ms=3_600_000)], T0 + 2001)[0][1] == 98


def test_expired_counters_are_swept_a_batch_at_a_time() -> None:
    store = MemoryBackend(max_keys=100_000)
    for i in range(1000):
        store.evaluate_now([fixed(f"k{i}", window_ms=1000)], T0)
    bucket = Check(("tb",), TOKEN, 10, 1000, 1, 20, False)
    store.evaluate_now([bucket], T0)
    assert len(store) == 1001
    # Each later millisecond removes at most one batch: no request pays for the whole sweep.
    store.evaluate_now([], T0 + 5000)
    assert len(store) == 1001 - SWEEP_BATCH
    for ms in range(1, 100):
        store.evaluate_now([], T0 + 5000 + ms)
    assert len(store) == 0


def _request(*values: str) -> bytes:
    r = rls_pb2.RateLimitRequest(domain="outrider")
    for value in values:
        r.descriptors.add().entries.add(key="remote_address", value=value)
    return bytes(r.SerializeToString())


def _address(i: int) -> str:
    return f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"


class _Context:
    """What the handler asks of a gRPC context (no deadline: nothing is shed)."""

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _service(max_keys: int, clock: list[float]) -> tuple[RateLimitService, MemoryBackend]:
    built = build({"rate_limits": {"domain": "outrider", "memory": {"max_keys": max_keys},
                                   "per_ip": {"requests_per_unit": 100, "unit": "second", "burst": 200}}})
    store = MemoryBackend(built.rate_limits.memory.max_keys)
    return RateLimitService(built.settings, GuardedBackend(store, 0.02), clock=lambda: clock[0]), store


async def test_200k_distinct_clients_through_the_service_level_off() -> None:
    """Worst case, nothing expires (the clock stands still): the cap alone holds the store, and the plan
    cache, the limit table's memo and the over-limit cache are bounded on their own. 200k distinct
    addresses, 8 per request (as Envoy sends several descriptors) to keep the test's time down."""
    cap = 20_000
    service, store = _service(cap, [T0 / 1000])
    context = _Context()
    rss: dict[int, float] = {}
    started = time.monotonic()
    for i in range(0, 200_000, 8):
        await service.ShouldRateLimitBytes(_request(*(_address(i + j) for j in range(8))), context)
        if i + 8 in (100_000, 200_000):
            gc.collect()  # the suite's other garbage in this process must not count as the store's
            rss[i + 8] = _rss_mb()
    assert time.monotonic() - started < 120
    assert len(store) == cap and store.evictions == 200_000 - cap
    assert len(service._plans) <= PLAN_CACHE_ENTRIES
    assert len(service._over_until) <= service.settings.local_cache_entries
    assert len(service.settings.table._memo) <= MEMO_ENTRIES
    # Every cache is full by 100k requests: the second 100k distinct clients add (next to) nothing. Unbounded,
    # they added ~60 MB; the allowance is for allocator noise of a process shared with the rest of the suite.
    assert rss[200_000] - rss[100_000] < 20, rss
    assert REGISTRY.get_sample_value("rate_limit_memory_keys") == cap


async def test_with_time_passing_expired_clients_are_swept_without_evictions() -> None:
    clock = [T0 / 1000]
    service, store = _service(100_000, clock)
    context = _Context()
    before = evictions()
    peak = 0
    for i in range(30_000):
        clock[0] += 0.001  # 1,000 new clients a second; a bucket is full again (forgotten) after 3 s
        await service.ShouldRateLimitBytes(_request(f"10.1.{i >> 8}.{i & 255}:{i}"), context)
        peak = max(peak, len(store))
    assert peak <= 3_100  # 3 s of clients (+ one sweep's slack), not 30,000
    assert evictions() == before


@pytest.mark.parametrize("value", ["x" * 100_000])
async def test_a_huge_descriptor_value_costs_a_bounded_counter(value: str) -> None:
    service, store = _service(100, [T0 / 1000])
    await service.ShouldRateLimitBytes(_request(value), _Context())
    (stored,) = (key for klass in store._classes.values() for key in klass)
    assert len(stored) < 300
    assert not service._plans  # a big request is decided, not remembered


def test_metric_series_per_descriptor_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """`detailed_metric` and limits sent with a descriptor name series after values a caller chooses."""
    from prometheus_client import CollectorRegistry

    from ratelimit_service import metrics

    monkeypatch.setattr(metrics, "MAX_DESCRIPTOR_SERIES", 5)
    registry = CollectorRegistry()
    counts = metrics.DescriptorCounts(metrics.service_metrics(registry))
    for i in range(50):
        counts.row("outrider", f"outrider.user_{i}").hits.inc()
    rows = {sample.labels["descriptor"]: sample.value for family in registry.collect()
            for sample in family.samples if sample.name == "rate_limit_hits_total"}
    assert len(rows) == 6 and rows[metrics.OVERFLOW] == 45
