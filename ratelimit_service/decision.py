"""The decision core: descriptors → checks to run (keys, windows) and outcomes → per-descriptor statuses.

Pure: plain values in and out, time passed in. The gRPC adapter maps protobuf to these values and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ratelimit_service.algorithms import Outcome
from ratelimit_service.backends.base import Check
from ratelimit_service.keys import ban_key, counter_base
from ratelimit_service.limits import BAN, FIXED, SLIDING, TOKEN, Entry, Limit, LimitTable, Match

OK, OVER_LIMIT = 1, 2  # envoy.service.ratelimit.v3.RateLimitResponse.Code
UNLIMITED_REMAINING = 4_294_967_295  # what envoyproxy/ratelimit reports for an unlimited descriptor
NONE, UNLIMITED, LIMITED = 0, 1, 2


class DescriptorInput(NamedTuple):
    entries: tuple[Entry, ...]
    hits: int
    # Envoy may send a limit with the descriptor (RateLimit.Action `limit`); it overrides the config.
    override: tuple[int, str] | None = None


@dataclass(slots=True)
class PlannedDescriptor:
    kind: int
    metric_key: str = ""
    # (limit, index into Plan.checks)
    limits: tuple[tuple[Limit, int], ...] = ()
    hits: int = 0


@dataclass(slots=True)
class Plan:
    domain: str
    descriptors: list[PlannedDescriptor]
    checks: list[Check]
    # The counter keys name windows: the plan holds until the first of them ends.
    valid_until_ms: int = 2**62


class Status(NamedTuple):
    code: int
    limit: Limit | None = None
    remaining: int = 0
    reset_ms: int = 0
    shadow_over: bool = False
    near: bool = False
    banned: bool = False  # OVER_LIMIT because the address is banned (rate_limits.per_ip.ban)


@dataclass(frozen=True, slots=True)
class Decision:
    over: bool
    statuses: list[Status]
    # The binding limit for RateLimit-* headers: (limit, remaining, reset_ms); None if nothing limited.
    headline: tuple[int, int, int] | None
    retry_after_ms: int
    # Ban keys of the bans this request started (each counted once, by the call that set it).
    started_bans: tuple[str, ...] = ()


# The counter key's prefix for some entries: injective, unlike envoyproxy/ratelimit's (see keys.py).
cache_key_base = counter_base


def _check(limit: Limit, base: str, hits: int, now_ms: int) -> Check:
    window_s = limit.window_s
    window_ms = window_s * 1000
    if limit.algorithm == TOKEN:
        # keys.window("tb", suffix), inlined (hot path)
        return Check((f"{base}tb{limit.key_suffix}",), TOKEN, limit.requests_per_unit, window_ms, hits,
                     limit.burst, limit.shadow)
    start = (now_ms // 1000 // window_s) * window_s
    current = f"{base}{start}{limit.key_suffix}"  # keys.window(start, suffix), inlined (hot path)
    if limit.algorithm == BAN:
        return Check((ban_key(base), current), BAN, limit.requests_per_unit, window_ms, hits, start * 1000,
                     limit.shadow, limit.ban_ms)
    if limit.algorithm == SLIDING:
        previous = f"{base}{start - window_s}{limit.key_suffix}"
        return Check((current, previous), SLIDING, limit.requests_per_unit, window_ms, hits, start * 1000,
                     limit.shadow)
    return Check((current,), FIXED, limit.requests_per_unit, window_ms, hits, start * 1000, limit.shadow)


def plan(table: LimitTable, domain: str, descriptors: Sequence[DescriptorInput], now_ms: int) -> Plan:
    """Match each descriptor, drop unlimited and replaced limits, and lay out the counters to check."""
    matches: list[Match | None] = []
    replaced: set[str] = set()
    named = False
    known = domain in table.domains
    for d in descriptors:
        # A limit sent with the descriptor applies in a configured domain only, as envoyproxy/ratelimit's
        # GetLimit checks the domain first (src/config/config_impl.go): no caller makes counters elsewhere.
        if d.override is not None and known:
            rpu, unit = d.override
            key = domain + "." + ".".join(f"{k}_{v}" if v else k for k, v in d.entries)
            override = (Limit(full_key=key, requests_per_unit=rpu, unit=unit),)
            matches.append(Match(override, key, cache_key_base(domain, d.entries)))
            continue
        match = table.resolve(domain, d.entries)
        matches.append(match)
        if match is not None:
            named = named or match.named
            for limit in match.limits:
                if limit.replaces:
                    replaced.update(limit.replaces)
    planned: list[PlannedDescriptor] = []
    checks: list[Check] = []
    for d, found in zip(descriptors, matches, strict=True):
        if found is None:
            planned.append(PlannedDescriptor(NONE))
            continue
        metric_key = found.metric_key
        if found.unlimited:
            planned.append(PlannedDescriptor(UNLIMITED, metric_key))
            continue
        kept = found.limits
        if named and replaced:
            kept = tuple(limit for limit in kept if not (limit.name and limit.name in replaced))
            if not kept:
                planned.append(PlannedDescriptor(NONE, metric_key))
                continue
        base = found.base
        pairs = []
        for limit in kept:
            pairs.append((limit, len(checks)))
            checks.append(_check(limit, base, d.hits, now_ms))
        planned.append(PlannedDescriptor(LIMITED, metric_key, tuple(pairs), d.hits))
    ends = [c.extra + c.window_ms for c in checks if c.algorithm != TOKEN]
    return Plan(domain, planned, checks, min(ends) if ends else 2**62)


def decide(plan: Plan, outcomes: Sequence[Outcome], near_ratio: float = 0.8) -> Decision:
    """Outcomes (in check order) → one status per descriptor, the overall code and the header values."""
    statuses: list[Status] = []
    over = False
    retry_after = 0
    headline: tuple[int, int, int] | None = None
    head_rank: tuple[int, int, int] | None = None
    started: list[str] = []
    for d in plan.descriptors:
        if d.kind != LIMITED:
            statuses.append(Status(OK, remaining=UNLIMITED_REMAINING if d.kind == UNLIMITED else 0))
            continue
        best: Status | None = None
        best_rank: tuple[int, int, int] | None = None
        for limit, index in d.limits:
            is_over, remaining, reset = outcomes[index]
            is_ban = limit.algorithm == BAN
            if is_ban:
                if not is_over:
                    continue  # a ban's count is no quota: it shows in no header and no status
                if remaining:
                    started.append(plan.checks[index].keys[0])
                remaining = 0
            blocking = is_over and not limit.shadow
            capacity = limit.capacity
            near = not is_over and capacity > 0 and (capacity - remaining) > capacity * near_ratio
            status = Status(OVER_LIMIT if blocking else OK, limit, remaining, reset,
                            shadow_over=is_over and limit.shadow, near=near, banned=blocking and is_ban)
            # Binding window: a blocking one with the longest wait, else the one with least left.
            rank = (0, -reset, 0) if blocking else (1, remaining, -reset)
            if best_rank is None or rank < best_rank:
                best, best_rank = status, rank
            if blocking:
                over = True
                retry_after = max(retry_after, reset)
            if head_rank is None or rank < head_rank:
                head_rank = rank
                headline = (capacity, 0 if blocking else remaining, reset)
        statuses.append(best if best is not None else Status(OK))
    return Decision(over, statuses, headline, retry_after if over else 0, tuple(started))


def locally_over(plan: Plan, until: dict[str, int], now_ms: int) -> list[Outcome] | None:
    """Outcomes without the store when a non-shadow counter is known to be over until its reset."""
    hit = False
    outcomes: list[Outcome] = []
    for check in plan.checks:
        expires = until.get(check.keys[0])
        if expires is not None and not check.shadow:
            if expires > now_ms:
                hit = True
                outcomes.append((True, 0, expires - now_ms))
                continue
            del until[check.keys[0]]
        # Not consulted: the request is refused anyway, so nothing is charged; report the window as is.
        outcomes.append((False, check.limit, check.window_ms))
    return outcomes if hit else None


def remember_over(plan: Plan, outcomes: Sequence[Outcome], until: dict[str, int], now_ms: int,
                  max_entries: int = 100_000) -> None:
    """Note counters over their limit until they reset, sparing the store their round trips."""
    for check, (is_over, remaining, reset) in zip(plan.checks, outcomes, strict=True):
        # Only when nothing is left: then no request of this counter fits until `reset` (for a fixed
        # window whatever its hits; for a bucket or sliding window, reset was computed for one hit).
        # Never a ban: lifting one (admin API, any replica) must take effect at the next request.
        if (is_over and not check.shadow and remaining == 0 and check.algorithm != BAN
                and (check.algorithm == FIXED or check.hits <= 1)):
            if len(until) >= max_entries:
                until.clear()  # a flood of distinct keys must not grow memory without bound
            until[check.keys[0]] = now_ms + reset
