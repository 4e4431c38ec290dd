"""The compiled limit table: descriptor trees per domain and envoyproxy/ratelimit's matching rules."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ratelimit_service.config import (
    CONNECTION_KEY,
    UNIT_SECONDS,
    DescriptorFile,
    RateLimitsConfig,
    WindowLimit,
    YamlDescriptor,
    wildcard_covers,
    wildcard_pattern,
)
from ratelimit_service.keys import counter_base

FIXED, SLIDING, TOKEN = 1, 2, 3
# The per-IP automatic ban (rate_limits.per_ip.ban): a fixed-window count of every request, then a ban key.
BAN = 4
# The key suffix of a ban's counter (`<base><window start>:ban`); the ban itself is `<base>ban` (keys.ban_key).
BAN_SUFFIX = ":ban"
ALGORITHMS = {"fixed_window": FIXED, "sliding_window": SLIDING, "token_bucket": TOKEN}
Entry = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit of one descriptor node (a node may carry several windows)."""

    full_key: str  # metric label, envoyproxy style: domain.key_value.key
    requests_per_unit: int
    unit: str
    algorithm: int = FIXED
    burst: int = 0  # token bucket capacity
    name: str = ""
    replaces: tuple[str, ...] = ()
    shadow: bool = False
    unlimited: bool = False
    detailed: bool = False
    # Nodes with several windows tell them apart by unit (":minute"); never holds `_` or `\\` (keys.window).
    key_suffix: str = ""
    # BAN only: how long a ban lasts (requests_per_unit per unit is the threshold).
    ban_ms: int = 0
    # unit_multiplier: the window is this many units, aligned on multiples of itself.
    multiplier: int = 1
    window_s: int = field(init=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "window_s", UNIT_SECONDS[self.unit] * self.multiplier)

    @property
    def capacity(self) -> int:
        """What a client can use at most right now: the burst of a bucket, else the window's quota."""
        return self.burst if self.algorithm == TOKEN else self.requests_per_unit


# A child's name: (key, value), or (key, None) for a descriptor that names its key only. envoyproxy/ratelimit
# looks children up by the string key + "_" + value, so a request's (a, b_c) finds the config's (a_b, c);
# a pair cannot be confused that way.
ChildKey = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class Wildcard:
    """A descriptor value holding `*`: a trailing one is a prefix match, any other `*` any run of characters."""

    key: str
    value: str  # as configured, e.g. `foo*` or `a*b`
    prefix: str | None  # the value without its only `*`, when that `*` ends it (the fast common case)
    pattern: re.Pattern[str] | None  # otherwise

    def matches(self, key: str, value: str) -> bool:
        if key != self.key:
            return False
        if self.prefix is not None:
            return value.startswith(self.prefix)
        assert self.pattern is not None
        return self.pattern.fullmatch(value) is not None


@dataclass(slots=True)
class Node:
    children: dict[ChildKey, Node] = field(default_factory=dict)
    # Wildcard values in config order: the first that matches wins (after an exact value, before the key alone).
    wildcards: list[tuple[Wildcard, Node]] = field(default_factory=list)
    limits: tuple[Limit, ...] = ()
    # This level's name in metric keys: `key` or `key_value` as configured (README "Statistics").
    metric_name: str = ""
    # value_to_metric: the request's value in the metric key instead of the configured one.
    value_to_metric: bool = False
    # share_threshold (wildcards only): every matched value counts on one counter, keyed by the pattern.
    share_threshold: bool = False


@dataclass(frozen=True, slots=True)
class Match:
    limits: tuple[Limit, ...]
    metric_key: str  # full_key, or with the request's values when detailed_metric / value_to_metric say so
    base: str = ""  # the counter key's prefix for these entries (see decision.cache_key_base)
    unlimited: bool = False
    named: bool = False  # some limit has a name, so `replaces` elsewhere may drop it
    # The entries the counter is keyed by: the request's, with a share_threshold wildcard's pattern in
    # place of the value it matched (None: the request's entries as they are).
    counter_entries: tuple[Entry, ...] | None = None


# Lookups remembered; bounded in entries and, by skipping long descriptors, in bytes (~16k × 0.5 KB).
MEMO_ENTRIES = 16_384
MEMO_MAX_CHARS = 512


class LimitTable:
    """Domain → descriptor tree; `lookup` follows envoyproxy/ratelimit's GetLimit."""

    def __init__(self, domains: dict[str, Node]) -> None:
        self.domains = domains
        # Requests repeat their descriptors (same client, same route): remember each lookup.
        self._memo: dict[tuple[str, tuple[Entry, ...]], Match | None] = {}

    def resolve(self, domain: str, entries: tuple[Entry, ...]) -> Match | None:
        """`lookup`, memoised, with the counter key prefix and flags the planner needs."""
        memo_key = (domain, entries)
        try:
            return self._memo[memo_key]
        except KeyError:
            pass
        found = self.lookup(domain, entries)
        if found is not None:
            base = counter_base(domain, found.counter_entries or entries)
            found = Match(found.limits, found.metric_key, base, any(x.unlimited for x in found.limits),
                          any(x.name for x in found.limits))
        if sum(len(k) + len(v) for k, v in entries) > MEMO_MAX_CHARS:
            return found
        if len(self._memo) >= MEMO_ENTRIES:
            self._memo.clear()  # a flood of distinct values must not grow memory without bound
        self._memo[memo_key] = found
        return found

    def lookup(self, domain: str, entries: Sequence[Entry]) -> Match | None:
        node = self.domains.get(domain)
        if node is None or not entries:
            return None
        found: tuple[Limit, ...] = ()
        last = len(entries) - 1
        path: list[Node] = []
        shared: dict[int, str] = {}  # entry index → the wildcard value its counter is keyed by
        for i, (key, value) in enumerate(entries):
            # key+value, then a wildcard value of the key, then the key alone (src/config/config_impl.go,
            # GetLimit: exact `key_value` first, then wildcardKeys in load order, then `key`).
            nxt = node.children.get((key, value))
            if nxt is None:
                for wildcard, candidate in node.wildcards:
                    if wildcard.matches(key, value):
                        nxt = candidate
                        if candidate.share_threshold:
                            shared[i] = wildcard.value
                        break
            if nxt is None:
                nxt = node.children.get((key, None))
            if nxt is not None:
                path.append(nxt)
            # A limit applies only where the request's descriptor ends, at the same depth.
            if nxt is not None and nxt.limits and i == last:
                found = nxt.limits
            if nxt is None or (not nxt.children and not nxt.wildcards):
                break
            node = nxt
        if not found:
            return None
        head = found[0]
        counter_entries = None
        if shared:
            counter_entries = tuple((k, shared.get(i, v)) for i, (k, v) in enumerate(entries))
        # Metric keys as config_impl.go GetLimit builds them: a share_threshold level always shows its pattern;
        # detailed_metric shows every other entry's value, value_to_metric that level's value.
        if head.detailed:
            detailed = domain + "." + ".".join(f"{k}_{shared.get(i, v)}" for i, (k, v) in enumerate(entries))
            return Match(found, detailed, counter_entries=counter_entries)
        if any(n.value_to_metric for n in path):
            names = [(f"{k}_{v}" if v else k) if n.value_to_metric and i not in shared else n.metric_name
                     for i, (n, (k, v)) in enumerate(zip(path, entries, strict=False))]
            return Match(found, domain + "." + ".".join(names), counter_entries=counter_entries)
        return Match(found, head.full_key, counter_entries=counter_entries)


def _limit(rules: WindowLimit | object, full_key: str, *, name: str = "", replaces: Sequence[str] = (),
           shadow: bool = False, detailed: bool = False, key_suffix: str = "") -> Limit:
    unlimited = bool(getattr(rules, "unlimited", False))
    algorithm = str(getattr(rules, "algorithm", "fixed_window"))
    rpu = int(getattr(rules, "requests_per_unit", 0))
    burst = getattr(rules, "burst", None)
    shadow = shadow or bool(getattr(rules, "shadow_mode", False))
    multiplier = getattr(rules, "unit_multiplier", None) or 1
    return Limit(full_key=full_key, requests_per_unit=rpu, unit=str(getattr(rules, "unit", None) or "second"),
                 multiplier=int(multiplier),
                 algorithm=ALGORITHMS[algorithm], burst=int(burst) if burst is not None else rpu,
                 name=name, replaces=tuple(replaces), shadow=shadow,
                 unlimited=unlimited, detailed=detailed, key_suffix=key_suffix)


def _load_descriptors(parent: Node, parent_key: str, descriptors: Iterable[YamlDescriptor]) -> None:
    for d in descriptors:
        final = d.key + (f"_{d.value}" if d.value else "")  # envoyproxy's name, for metrics and messages
        child: ChildKey = (d.key, d.value or None)
        if child in parent.children:
            raise ValueError(f"duplicate descriptor composite key '{parent_key}{final}'")
        full_key = parent_key + final
        limits: tuple[Limit, ...] = ()
        if d.rate_limit is not None:
            r = d.rate_limit
            limits = (_limit(r, full_key, name=r.name, replaces=[x.name for x in r.replaces],
                             shadow=d.shadow_mode, detailed=d.detailed_metric),)
        node = Node(limits=limits, metric_name=final, value_to_metric=d.value_to_metric,
                    share_threshold=d.share_threshold)
        _load_descriptors(node, full_key + ".", d.descriptors)
        parent.children[child] = node
        if "*" in d.value:
            # Within one file the model refused this already; files merged into one domain are checked here.
            for earlier, _ in parent.wildcards:
                if earlier.key == d.key and wildcard_covers(earlier.value, d.value):
                    raise ValueError(f"descriptor '{parent_key}{final}' can never apply: the wildcard "
                                     f"'{earlier.key}_{earlier.value}' loaded before it matches every value it matches")
            trailing_only = d.value.index("*") == len(d.value) - 1
            parent.wildcards.append((Wildcard(d.key, d.value, d.value[:-1] if trailing_only else None,
                                              None if trailing_only else wildcard_pattern(d.value)), node))


def _plan_limits(windows: Sequence[WindowLimit], full_key: str) -> tuple[Limit, ...]:
    active = [w for w in windows if not w.unlimited]
    if not active:
        # Every window unlimited: the node answers "unlimited", as envoyproxy/ratelimit does.
        return (_limit(windows[0], full_key),) if windows else ()
    many = len(active) > 1
    # `:<unit>` tells a node's windows apart; it holds no `_` or `\\`, so the key stays injective (keys.py).
    return tuple(_limit(w, full_key, key_suffix=f":{w.unit}" if many else "") for w in active)


def compile_table(rl: RateLimitsConfig | None, files: Sequence[DescriptorFile] = ()) -> LimitTable:
    """Tier plans and envoyproxy-format files → one LimitTable. Raises ValueError on a clash."""
    domains: dict[str, Node] = {}
    if rl is not None:
        root = domains.setdefault(rl.domain, Node())
        prefix = rl.domain + "."
        if rl.per_ip is not None:
            per_ip = _plan_limits([rl.per_ip], prefix + "remote_address")
            ban = rl.per_ip.ban
            if ban is not None:
                per_ip += (Limit(full_key=prefix + "remote_address", requests_per_unit=ban.after_requests,
                                 unit=ban.window, algorithm=BAN, shadow=rl.per_ip.shadow_mode,
                                 key_suffix=BAN_SUFFIX, ban_ms=ban.duration_s * 1000),)
            root.children["remote_address", None] = Node(limits=per_ip)
            rate = rl.per_ip.new_connections_per_second
            if rate is not None:
                # Asked by Envoy's network rate limit filter once per new connection (ratelimit_service/envoy.py).
                root.children[CONNECTION_KEY, None] = Node(limits=(Limit(
                    full_key=prefix + CONNECTION_KEY, requests_per_unit=rate, unit="second",
                    algorithm=ALGORITHMS["token_bucket"], burst=rate, shadow=rl.per_ip.shadow_mode),))
        for tier, windows in rl.tiers.items():
            full = f"{prefix}tier_{tier}.user_id"
            user = Node(limits=_plan_limits(windows, full))
            root.children["tier", tier] = Node(children={("user_id", None): user})
        if rl.unknown_tier is not None:
            windows = rl.tiers[rl.unknown_tier]
            full = f"{prefix}tier.user_id"
            root.children["tier", None] = Node(children={("user_id", None): Node(limits=_plan_limits(windows, full))})
        for endpoint in rl.endpoints:
            node = Node(limits=_plan_limits([endpoint.limit], f"{prefix}endpoint_{endpoint.value}"))
            root.children["endpoint", endpoint.value] = node
    for parsed in files:
        root = domains.setdefault(parsed.domain, Node())
        _load_descriptors(root, parsed.domain + ".", parsed.descriptors)
    return LimitTable(domains)
