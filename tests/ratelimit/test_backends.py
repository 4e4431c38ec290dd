"""One behavioural suite, run against the memory backend, a real Redis and a real 3-node Redis Cluster."""

from __future__ import annotations

import asyncio

import pytest

from ratelimit_service.backends.base import Backend
from ratelimit_service.decision import OK, OVER_LIMIT
from tests.ratelimit.helpers import MINUTE, T0, desc, limit_yaml, run, table_of


async def test_fixed_window_allows_the_limit_then_refuses_until_the_window_resets(backend: Backend) -> None:
    table = table_of(limit_yaml("d", "fixed_window", 3))
    seen = [await run(backend, table, "d", [desc(("k", "a"))], T0 + 1000 * i) for i in range(4)]
    assert [d.over for d in seen] == [False, False, False, True]
    assert [d.statuses[0].remaining for d in seen] == [2, 1, 0, 0]
    assert seen[0].statuses[0].reset_ms == MINUTE
    assert seen[3].statuses[0].code == OVER_LIMIT
    assert seen[3].retry_after_ms == MINUTE - 3000
    # Another value of the key has its own counter; the next window starts from zero.
    assert not (await run(backend, table, "d", [desc(("k", "b"))], T0 + 5000)).over
    assert not (await run(backend, table, "d", [desc(("k", "a"))], T0 + MINUTE)).over


async def test_hits_addend_counts_several_hits(backend: Backend) -> None:
    table = table_of(limit_yaml("d", "fixed_window", 10))
    first = await run(backend, table, "d", [desc(("k", "a"), hits=7)], T0)
    assert (first.over, first.statuses[0].remaining) == (False, 3)
    too_many = await run(backend, table, "d", [desc(("k", "a"), hits=4)], T0)
    assert too_many.over
    # A fixed window counts its own refused hits too (envoyproxy/ratelimit increments, then compares:
    # src/redis/fixed_cache_impl.go DoLimit), so the window is spent: 11 of 10.
    assert (await run(backend, table, "d", [desc(("k", "a"), hits=3)], T0)).over


async def test_sliding_window_weights_the_previous_window(backend: Backend) -> None:
    table = table_of(limit_yaml("d", "sliding_window", 10))
    assert not (await run(backend, table, "d", [desc(("k", "a"), hits=10)], T0 + 59_000)).over
    # Half way through the next window the previous 10 weigh 5: five more fit, the sixth does not.
    half = T0 + MINUTE + 30_000
    results = [await run(backend, table, "d", [desc(("k", "a"))], half) for _ in range(6)]
    assert [r.over for r in results] == [False] * 5 + [True]
    assert results[4].statuses[0].remaining == 0
    # Over, with 10 in the previous and 5 in this window: one hit fits once 10*(1-t)+5 <= 9 → t = 0.6.
    assert results[5].retry_after_ms == pytest.approx(6_000, abs=1)
    assert not (await run(backend, table, "d", [desc(("k", "a"))], half + 6_000)).over


async def test_token_bucket_bursts_then_refills_at_its_rate(backend: Backend) -> None:
    table = table_of(limit_yaml("d", "token_bucket", 10, unit="second", burst=20))
    burst = [await run(backend, table, "d", [desc(("k", "a"))], T0) for _ in range(21)]
    assert [r.over for r in burst] == [False] * 20 + [True]
    assert burst[0].headline == (20, 19, 100)  # capacity is the burst; full again 100 ms later
    assert burst[20].retry_after_ms == 100  # 10 per second: one token every 100 ms
    assert not (await run(backend, table, "d", [desc(("k", "a"))], T0 + 100)).over
    assert (await run(backend, table, "d", [desc(("k", "a"))], T0 + 100)).over
    refilled = [await run(backend, table, "d", [desc(("k", "a"))], T0 + 10_000) for _ in range(21)]
    assert sum(not r.over for r in refilled) == 20


async def test_a_refused_request_still_charges_the_other_descriptors(backend: Backend) -> None:
    """envoyproxy/ratelimit's default (src/redis/fixed_cache_impl.go DoLimit): every descriptor's counter is
    incremented whatever the others decide; STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT is tested in
    test_reference_rules.py."""
    table = table_of("""
domain: d
descriptors:
  - key: small
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: big
    rate_limit: {unit: minute, requests_per_unit: 100}
""")
    both = [desc(("small", "x")), desc(("big", "x"))]
    first = await run(backend, table, "d", both, T0)
    assert not first.over and first.statuses[1].remaining == 99
    refused = await run(backend, table, "d", both, T0)
    assert refused.over and [s.code for s in refused.statuses] == [OVER_LIMIT, OK]
    alone = await run(backend, table, "d", [desc(("big", "x"))], T0)
    assert alone.statuses[0].remaining == 97  # the refused request counted on `big` too


async def test_shadow_mode_answers_ok_and_still_counts(backend: Backend) -> None:
    table = table_of(limit_yaml("d", "fixed_window", 2, shadow=True))
    results = [await run(backend, table, "d", [desc(("k", "a"))], T0) for _ in range(4)]
    assert not any(r.over for r in results)
    assert [r.statuses[0].shadow_over for r in results] == [False, False, True, True]


async def test_several_windows_on_one_descriptor(backend: Backend) -> None:
    from ratelimit_service.config import RateLimitsConfig
    from ratelimit_service.decision import DescriptorInput, decide, plan
    from ratelimit_service.limits import compile_table

    rl = RateLimitsConfig.model_validate({"tiers": {"free": [
        {"requests_per_unit": 3, "unit": "minute"}, {"requests_per_unit": 5, "unit": "hour"}]}})
    table = compile_table(rl)
    entries = (("tier", "free"), ("user_id", "u1"))

    async def once(now: int) -> bool:
        laid = plan(table, "outrider", [DescriptorInput(entries, 1)], now)
        return decide(laid, await backend.evaluate("outrider", laid.checks, now)).over

    first_minute = [await once(T0 + i) for i in range(4)]
    second_minute = [await once(T0 + MINUTE + i) for i in range(3)]
    assert first_minute == [False, False, False, True]
    # The request the minute refused still counted on the hour (every counter counts, as envoyproxy's
    # default): the hour has 1 left after 4, and its 5 are spent.
    assert second_minute == [False, True, True]


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
async def test_64_concurrent_clients_get_exactly_the_limit(backend: Backend, algorithm: str) -> None:
    limit = 50
    burst = limit if algorithm == "token_bucket" else None
    table = table_of(limit_yaml("d", algorithm, limit, unit="day", burst=burst))

    async def client() -> int:
        admitted = 0
        for _ in range(4):
            admitted += not (await run(backend, table, "d", [desc(("k", "hot"))], T0)).over
        return admitted

    results = await asyncio.gather(*(client() for _ in range(64)))
    assert sum(results) == limit


async def test_a_descriptor_limit_of_zero_refuses_everything(backend: Backend) -> None:
    table = table_of("""
domain: d
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
""")
    assert (await run(backend, table, "d", [desc(("remote_address", "50.0.0.5"))], T0)).over
    assert not (await run(backend, table, "d", [desc(("remote_address", "50.0.0.1"))], T0)).over
