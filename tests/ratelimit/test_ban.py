"""The per-IP automatic ban: the pure rule, the plan and decision, and each store (memory, Redis, Cluster)."""

from __future__ import annotations

import pytest

from ratelimit_service.algorithms import ban
from ratelimit_service.backends.base import Backend
from ratelimit_service.backends.memory import MemoryBackend
from ratelimit_service.config import RateLimitsConfig
from ratelimit_service.decision import OK, OVER_LIMIT, Decision, decide, locally_over, plan, remember_over
from ratelimit_service.keys import ban_key, banned_address, counter_base
from ratelimit_service.limits import BAN, LimitTable, compile_table
from tests.ratelimit.helpers import MINUTE, T0, desc

BAN_MS = 10_000


def per_ip_table(after: int = 5, rate: int = 100, burst: int = 200, shadow: bool = False) -> LimitTable:
    return compile_table(RateLimitsConfig.model_validate({"per_ip": {
        "requests_per_unit": rate, "unit": "second", "burst": burst, "shadow_mode": shadow,
        "ban": {"after_requests": after, "window": "minute", "duration_s": BAN_MS // 1000}}}))


async def ip(backend: Backend, table: LimitTable, now_ms: int, address: str = "10.0.0.1") -> Decision:
    laid_out = plan(table, "outrider", [desc(("remote_address", address))], now_ms)
    return decide(laid_out, await backend.evaluate("outrider", laid_out.checks, now_ms))


def key_of(address: str) -> str:
    return ban_key(counter_base("outrider", (("remote_address", address),)))


def test_the_rule_counts_then_bans_then_waits_out_the_ban() -> None:
    assert ban(0, 4, 5, 1, T0, MINUTE, BAN_MS, T0 + 1000) == ((False, 0, MINUTE - 1000), False)
    assert ban(0, 5, 5, 1, T0, MINUTE, BAN_MS, T0 + 1000) == ((True, 1, BAN_MS), True)  # the 6th starts it
    assert ban(2500, 0, 5, 1, T0, MINUTE, BAN_MS, T0) == ((True, 0, 2500), False)  # banned: no new ban


def test_the_ban_is_a_check_of_the_per_ip_descriptor_keyed_apart() -> None:
    laid_out = plan(per_ip_table(), "outrider", [desc(("remote_address", "10.0.0.1"))], T0 + 5)
    bans = [c for c in laid_out.checks if c.algorithm == BAN]
    assert len(bans) == 1 and len(laid_out.checks) == 2  # the token bucket, and the ban
    assert bans[0].keys[0] == key_of("10.0.0.1") and bans[0].ban_ms == BAN_MS
    assert bans[0].keys[1] == counter_base("outrider", (("remote_address", "10.0.0.1"),)) + f"{T0 // 1000}:ban"
    assert banned_address(bans[0].keys[0], "outrider") == "10.0.0.1"
    assert banned_address(bans[0].keys[1], "outrider") is None
    # A value ending like a ban key is no ban key: its `_` is escaped.
    assert banned_address(ban_key(counter_base("outrider", (("remote_address", "x_ban"),))), "outrider") == "x_ban"
    assert banned_address(counter_base("outrider", (("user", "x"),)) + "ban", "outrider") is None


async def test_an_address_past_the_threshold_is_banned_for_the_duration(backend: Backend) -> None:
    table = per_ip_table(after=5)
    seen = [await ip(backend, table, T0 + i) for i in range(7)]
    assert [d.over for d in seen] == [False] * 5 + [True, True]
    # The quota headers are the rate limit's, never the ban counter's.
    assert seen[0].headline is not None and seen[0].headline[0] == 200
    assert seen[5].started_bans == (key_of("10.0.0.1"),) and seen[6].started_bans == ()
    assert seen[5].statuses[0].banned and seen[5].statuses[0].code == OVER_LIMIT
    assert seen[5].retry_after_ms == BAN_MS
    assert BAN_MS - 10 <= seen[6].retry_after_ms <= BAN_MS  # what is left of the ban (the store's clock)
    # Another address is not banned; the banned one is still refused (Redis times the ban by its own clock).
    assert not (await ip(backend, table, T0 + 7, "10.0.0.2")).over
    assert (await ip(backend, table, T0 + 5000, "10.0.0.1")).over


async def test_the_memory_ban_ends_after_its_duration() -> None:
    backend, table = MemoryBackend(), per_ip_table(after=1)
    assert [(await ip(backend, table, T0)).over for _ in range(2)] == [False, True]
    assert (await ip(backend, table, T0 + BAN_MS - 1)).over
    assert not (await ip(backend, table, T0 + BAN_MS)).over


async def test_refused_requests_count_toward_the_ban(backend: Backend) -> None:
    # A bucket of 2: from the third request on the rate limit refuses; the ban still counts them all.
    table = per_ip_table(after=5, rate=1, burst=2)
    seen = [await ip(backend, table, T0 + i) for i in range(6)]
    assert [d.over for d in seen] == [False, False, True, True, True, True]
    assert [d.statuses[0].banned for d in seen] == [False] * 5 + [True]


async def test_bans_are_listed_and_lifted(backend: Backend) -> None:
    table = per_ip_table(after=1)
    for address in ("10.0.0.1", "2001:db8::1"):
        await ip(backend, table, T0, address)
        assert (await ip(backend, table, T0, address)).over
    listed = {banned_address(key, "outrider"): left for key, left in await backend.bans("outrider")}
    assert set(listed) == {"10.0.0.1", "2001:db8::1"} and all(left > 0 for left in listed.values())
    assert await backend.unban("outrider", key_of("10.0.0.1"))
    assert not await backend.unban("outrider", key_of("10.0.0.1"))  # nothing left to lift
    assert not (await ip(backend, table, T0 + 1)).over  # the count restarted with the ban
    assert (await ip(backend, table, T0 + 1, "2001:db8::1")).over


async def test_shadow_mode_bans_nobody_but_says_so(backend: Backend) -> None:
    table = per_ip_table(after=2, shadow=True)
    seen = [await ip(backend, table, T0) for _ in range(4)]
    assert not any(d.over for d in seen)
    assert seen[2].started_bans and seen[2].statuses[0].shadow_over


def test_a_ban_is_never_answered_from_the_local_cache() -> None:
    # Lifting a ban (any replica, admin API) must hold at the next request: only the store knows.
    laid_out = plan(per_ip_table(), "outrider", [desc(("remote_address", "10.0.0.1"))], T0)
    until: dict[str, int] = {}
    remember_over(laid_out, [(False, 5, 100), (True, 0, BAN_MS)], until, T0)
    assert until == {}
    assert locally_over(laid_out, until, T0 + 1) == {}


@pytest.mark.parametrize("field", [{"after_requests": 0}, {"duration_s": 0}, {"window": "fortnight"}])
def test_bad_ban_settings_are_refused(field: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="ban"):
        RateLimitsConfig.model_validate({"per_ip": {"requests_per_unit": 1, "unit": "second", "ban": field}})


def test_an_unlimited_per_ip_cannot_ban() -> None:
    with pytest.raises(ValueError, match="`ban` needs a per-IP limit"):
        RateLimitsConfig.model_validate({"per_ip": {"unlimited": True, "ban": {}}})


def test_decide_without_a_ban_outcome_keeps_ok() -> None:
    laid_out = plan(per_ip_table(), "outrider", [desc(("remote_address", "10.0.0.1"))], T0)
    decision = decide(laid_out, [(False, 199, 10), (False, 4, MINUTE)])
    assert not decision.over and decision.statuses[0].code == OK and decision.statuses[0].remaining == 199
