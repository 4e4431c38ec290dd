"""The decision core: descriptors → checks to run (keys, windows) and outcomes → per-descriptor statuses.

Pure: plain values in and out, time passed in. The gRPC adapter maps protobuf to these values and back.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
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
    # Hits counted by the near-limit stat (rate_limit_near_limit_total; envoyproxy's `near_limit`).
    near_hits: int = 0
    banned: bool = False  # OVER_LIMIT because the address is banned (rate_limits.per_ip.ban)


def _f32(x: float) -> float:
    return float(struct.unpack("f", struct.pack("f", x))[0])


@lru_cache(maxsize=4096)
def near_threshold(limit: int, ratio: float) -> int:
    """floor(limit × ratio) in float32, as envoyproxy/ratelimit computes it (src/limiter/base_limiter.go,
    GetResponseDescriptorStatus: `uint32(math.Floor(float64(float32(limit) * nearLimitRatio)))`)."""
    return math.floor(_f32(_f32(float(limit)) * _f32(ratio)))


def near_hits(limit: int, ratio: float, before: int, after: int, hits: int) -> int:
    """The hits the near-limit stat counts for one check going from `before` to `after` (base_limiter.go,
    checkNearLimitThreshold / checkOverLimitThreshold): only the part past floor(limit × ratio) and not
    past the limit itself; a request that was already near (or over) counts whole (or not at all)."""
    near = near_threshold(limit, ratio)
    if after > limit:
        return 0 if before >= limit else limit - max(near, before)
    if after > near:
        return hits if before >= near else after - near
    return 0


@dataclass(frozen=True, slots=True)
class Decision:
    over: bool
    statuses: list[Status]
    # The binding limit for RateLimit-* headers: (limit, remaining, reset_ms); None if nothing limited.
    headline: tuple[int, int, int] | None
    retry_after_ms: int
    # Ban keys of the bans this request started (each counted once, by the call that set it).
    started_bans: tuple[str, ...] = ()
    # Over the limit but answered OK by the global shadow mode (rate_limits.shadow_mode).
    shadowed: bool = False


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


def decide(plan: Plan, outcomes: Sequence[Outcome], near_ratio: float = 0.8,
           global_shadow: bool = False) -> Decision:
    """Outcomes (in check order) → one status per descriptor, the overall code and the header values.

    As envoyproxy/ratelimit answers (src/limiter/base_limiter.go GetResponseDescriptorStatus,
    src/service/ratelimit.go): an over-limit status reports limit_remaining 0; a shadow-mode rule over its
    limit answers OK (remaining 0); with `global_shadow` (SHADOW_MODE) the statuses stay as decided and
    only the overall code is OK."""
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
            hits = plan.checks[index].hits
            if is_ban:
                near = 0
            elif is_over:
                # `remaining` of an over outcome is what was left before this request (0: none)
                before = capacity - remaining
                near = near_hits(capacity, near_ratio, before, before + hits, hits) if remaining else 0
            else:
                after = capacity - remaining
                near = near_hits(capacity, near_ratio, after - hits, after, hits)
            status = Status(OVER_LIMIT if blocking else OK, limit, 0 if is_over else remaining, reset,
                            shadow_over=is_over and limit.shadow, near_hits=near, banned=blocking and is_ban)
            # Binding window: a blocking one with the longest wait, else the one with least left.
            rank = (0, -reset, 0) if blocking else (1, remaining, -reset)
            if best_rank is None or rank < best_rank:
                best, best_rank = status, rank
            if blocking:
                over = True
                retry_after = max(retry_after, reset)
            if head_rank is None or rank < head_rank:
                head_rank = rank
                headline = (capacity, 0 if is_over else remaining, reset)
        statuses.append(best if best is not None else Status(OK))
    if over and global_shadow:
        return Decision(False, statuses, headline, 0, tuple(started), shadowed=True)
    return Decision(over, statuses, headline, retry_after if over else 0, tuple(started))


def locally_over(plan: Plan, until: dict[str, int], now_ms: int) -> dict[int, Outcome]:
    """Outcomes of the checks known over their limit until their reset (by index; empty: none).

    Only these are answered without the store; the request's other checks still go to it, charged as
    usual (envoyproxy/ratelimit, src/redis/fixed_cache_impl.go DoLimit: a key over in the local cache is
    skipped, the others are incremented). The answer is the store's own: over, 0 left, the same reset."""
    known: dict[int, Outcome] = {}
    for index, check in enumerate(plan.checks):
        if check.hits <= 0:
            continue  # a zero-hit request can be admitted at exactly the limit: ask the store
        expires = until.get(check.keys[0])
        if expires is not None:
            if expires > now_ms:
                known[index] = (True, 0, expires - now_ms)
            else:
                del until[check.keys[0]]
    return known


def remember_over(plan: Plan, outcomes: Sequence[Outcome], until: dict[str, int], now_ms: int,
                  max_entries: int = 100_000) -> None:
    """Note counters over their limit until they reset, sparing the store their round trips."""
    for check, (is_over, remaining, reset) in zip(plan.checks, outcomes, strict=True):
        # Only when nothing was left before the request: then no request of this counter fits until
        # `reset` whatever the charging mode (for a fixed window whatever its hits; for a bucket or sliding
        # window, reset was computed for one hit). Never a shadow check (its answer is OK; the store keeps
        # its stats right). Never a ban: lifting one (admin API, any replica) must take effect at once.
        if (is_over and not check.shadow and remaining == 0 and check.algorithm != BAN and max_entries > 0
                and (check.algorithm == FIXED or check.hits <= 1)):
            if len(until) >= max_entries:
                until.clear()  # a flood of distinct keys must not grow memory without bound
            until[check.keys[0]] = now_ms + reset
