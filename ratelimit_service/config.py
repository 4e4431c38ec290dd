"""Config model of rate limiting: the gateway's `rate_limits` section, `services.ratelimit`, and
envoyproxy/ratelimit YAML files."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from outrider.config.base import ConfigPath, Name, Port, StrictModel
from outrider.config.errors import ConfigError, Problem
from outrider.config.extensions import section, service_settings
from outrider.config.model import GatewayConfig, RouteConfig, ServiceEndpoint
from outrider.config.yamlfile import parse_mapping, pydantic_issues, read_text

SERVICE = "ratelimit"

Unit = Literal["second", "minute", "hour", "day", "week", "month", "year"]
AlgorithmName = Literal["fixed_window", "sliding_window", "token_bucket"]
# Seconds per unit, as envoyproxy/ratelimit divides time (a month is 30 days, a year 365).
UNIT_SECONDS: dict[str, int] = {
    "second": 1, "minute": 60, "hour": 3600, "day": 86_400,
    "week": 7 * 86_400, "month": 30 * 86_400, "year": 365 * 86_400,
}
Count = Annotated[int, Field(ge=0, le=4_294_967_295)]
# A rate limit domain: a name, or Envoy Gateway's `<namespace>/<gateway>/<listener>` (its ratelimit filter's
# domain is the IR listener name, internal/xds/translator/ratelimit.go getRateLimitDomain in envoyproxy/gateway).
Domain = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")]
DescriptorKey = Annotated[str, Field(min_length=1, max_length=256)]


class _LimitRules(StrictModel):
    """Rules shared by a gateway plan window and an envoyproxy-format `rate_limit`."""

    requests_per_unit: Count = 0
    unit: Unit | None = None
    unlimited: bool = False
    # outrider extensions: envoyproxy/ratelimit only knows fixed windows.
    algorithm: AlgorithmName = "fixed_window"
    burst: Annotated[int, Field(ge=1, le=4_294_967_295)] | None = None

    @field_validator("unit", mode="before")
    @classmethod
    def _lower_unit(cls, value: Any) -> Any:
        # envoyproxy/ratelimit files write units in capitals (SECOND); both spellings are accepted.
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> _LimitRules:
        if self.unlimited:
            if self.unit is not None:
                raise ValueError("should not specify rate limit unit when unlimited")
            return self
        if self.unit is None:
            raise ValueError("a rate limit needs `unit` (second, minute, hour, day, week, month, year)")
        if self.burst is not None and self.algorithm != "token_bucket":
            raise ValueError("`burst` applies to algorithm token_bucket only")
        if self.algorithm == "token_bucket" and self.requests_per_unit == 0:
            raise ValueError("a token bucket needs requests_per_unit > 0 (its refill rate)")
        return self


# ---- envoyproxy/ratelimit file format -----------------------------------------------------------------


class YamlReplaces(StrictModel):
    name: str


# Keys some ratelimit deployment or fork writes that this service does not take, each with the reason it
# is refused rather than ignored (a silently ignored key would load a rule that does not do what it says).
# envoyproxy/ratelimit itself refuses every key outside its validKeys (src/config/config_impl.go,
# validateYamlKeys: "config error, unknown key"); these only get a clearer message here.
REFUSED_RATE_LIMIT_KEYS: dict[str, str] = {
    "quota": "quota mode is not part of envoyproxy/ratelimit's descriptor format and is not supported",
    "quota_mode": "quota mode is not part of envoyproxy/ratelimit's descriptor format and is not supported",
}
REFUSED_DESCRIPTOR_KEYS: dict[str, str] = {
    "metadata": "envoyproxy/ratelimit has no per-descriptor `metadata` (its README's descriptor list "
                "definition has none; response metadata is a service setting there): not supported",
    "quota": "quota mode is not part of envoyproxy/ratelimit's descriptor format and is not supported",
    "quota_mode": "quota mode is not part of envoyproxy/ratelimit's descriptor format and is not supported",
    "unit_multiplier": "`unit_multiplier` belongs inside `rate_limit`",
}


def _refuse_keys(data: Any, refused: dict[str, str]) -> Any:
    if isinstance(data, dict):
        for key, reason in refused.items():
            if key in data:
                raise ValueError(f"`{key}`: {reason}")
    return data


class YamlRateLimit(_LimitRules):
    name: str = ""
    replaces: list[YamlReplaces] = Field(default_factory=list)
    # A window of this many units (5 × minute: a five-minute window, aligned on multiples of five minutes).
    unit_multiplier: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data: Any) -> Any:
        return _refuse_keys(data, REFUSED_RATE_LIMIT_KEYS)

    @model_validator(mode="after")
    def _replaces(self) -> YamlRateLimit:
        if self.unlimited and self.unit_multiplier is not None:
            raise ValueError("should not specify unit_multiplier when unlimited")
        for item in self.replaces:
            if not item.name:
                raise ValueError("should not have an empty replaces entry")
            if item.name == self.name:
                raise ValueError("replaces should not contain name of same descriptor")
        return self


def _duplicate_composite_keys(descriptors: list[YamlDescriptor]) -> None:
    keys = [d.key + (f"_{d.value}" if d.value else "") for d in descriptors]
    dupes = sorted(k for k, n in Counter(keys).items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate descriptor composite key '{dupes[0]}'")


def wildcard_pattern(value: str) -> re.Pattern[str] | None:
    """The matcher of a descriptor value holding `*` (None: an exact value). Each `*` stands for any run of
    characters, possibly empty; a trailing `*` is envoyproxy/ratelimit's prefix match."""
    if "*" not in value:
        return None
    return re.compile(".*".join(re.escape(part) for part in value.split("*")), re.DOTALL)


def wildcard_covers(earlier: str, later: str) -> bool:
    """Whether `earlier` matches every value `later` matches (then `later`, tried after it, never applies).

    Checked on three expansions of `later`: each `*` as nothing, as one character and as three characters
    that no literal part holds; exact for the shapes in use (prefix*, *suffix, a*b, a*b*c)."""
    pattern = wildcard_pattern(earlier)
    assert pattern is not None
    probe = "\x00"
    return all(pattern.fullmatch(later.replace("*", fill)) is not None for fill in ("", probe, probe * 3))


def _unreachable_wildcards(descriptors: list[YamlDescriptor]) -> None:
    """A wildcard value tried after another of the same key that matches all it matches never applies:
    refused (envoyproxy/ratelimit tries wildcards in file order and takes the first that matches)."""
    seen: list[YamlDescriptor] = []
    for d in descriptors:
        if "*" not in d.value:
            continue
        for earlier in seen:
            if earlier.key == d.key and wildcard_covers(earlier.value, d.value):
                raise ValueError(f"descriptor '{d.key}_{d.value}' can never apply: the earlier wildcard "
                                 f"'{earlier.key}_{earlier.value}' matches every value it matches and is tried first")
        seen.append(d)
    # A value of `*` alone matches every value, the empty one too: a key-only sibling is never reached
    # (envoyproxy/ratelimit tries key_value, then wildcards, then the key alone).
    catch_all = {d.key for d in descriptors if d.value and d.value.strip("*") == ""}
    for d in descriptors:
        if not d.value and d.key in catch_all:
            raise ValueError(f"descriptor '{d.key}' (no value) can never apply: the wildcard '{d.key}_*' "
                             "matches every value and is tried first")


class YamlDescriptor(StrictModel):
    """One descriptor of envoyproxy/ratelimit's format (its README, "Descriptor list definition")."""

    key: Annotated[str, Field(min_length=1)]
    value: str = ""
    rate_limit: YamlRateLimit | None = None
    descriptors: list[YamlDescriptor] = Field(default_factory=list)
    shadow_mode: bool = False
    # Metric key with the request's values of every entry (README "Including detailed metrics for
    # unspecified values").
    detailed_metric: bool = False
    # Metric key with the request's value at this level instead of the configured one (a wildcard or a
    # key-only descriptor), README "value_to_metric".
    value_to_metric: bool = False
    # Every value a wildcard matches shares one counter (the key holds the pattern, not the value).
    share_threshold: bool = False

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data: Any) -> Any:
        return _refuse_keys(data, REFUSED_DESCRIPTOR_KEYS)

    @field_validator("descriptors")
    @classmethod
    def _unique(cls, value: list[YamlDescriptor]) -> list[YamlDescriptor]:
        _duplicate_composite_keys(value)
        _unreachable_wildcards(value)
        return value

    @model_validator(mode="after")
    def _share_needs_wildcard(self) -> YamlDescriptor:
        if self.share_threshold and "*" not in self.value:
            raise ValueError(f"share_threshold on '{self.key}' needs a wildcard value (one holding `*`): "
                             "an exact value has one counter already")
        return self


class DescriptorFile(StrictModel):
    """One envoyproxy/ratelimit config file: a domain and its descriptor tree."""

    domain: Annotated[str, Field(min_length=1)]
    descriptors: list[YamlDescriptor] = Field(default_factory=list)

    @field_validator("descriptors")
    @classmethod
    def _unique(cls, value: list[YamlDescriptor]) -> list[YamlDescriptor]:
        _duplicate_composite_keys(value)
        _unreachable_wildcards(value)
        return value


def parse_descriptor_file(text: str, filename: str) -> DescriptorFile:
    """Parse envoyproxy/ratelimit YAML; raises ConfigError with the file, field path, line and reason."""
    data, lines = parse_mapping(text, filename, "the file must hold a mapping with `domain`")
    try:
        return DescriptorFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(filename, pydantic_issues(exc, lines)) from None


def load_descriptor_file(path: Path) -> DescriptorFile:
    return parse_descriptor_file(read_text(path), str(path))


# ---- the gateway's `rate_limits` section --------------------------------------------------------------


class WindowLimit(_LimitRules):
    """One window of a plan: e.g. 60 per minute, fixed window."""

    shadow_mode: bool = False


class BanConfig(StrictModel):
    """The automatic ban of one client address (`rate_limits.per_ip.ban`).

    Every request carrying the per-IP descriptor counts, refused ones included, in a fixed window of one
    `window`; the request that takes an address past `after_requests` starts a ban of `duration_s`, during
    which every request of that address is refused (429, Retry-After = what is left of the ban). The design's
    10,000 "in a window" defaults to a minute: with the per-IP rate of 100 req/s (6,000 a minute) only a
    client that keeps sending after its 429s gets there, never one that honours them.
    """

    after_requests: Annotated[int, Field(ge=1, le=4_294_967_295)] = 10_000
    window: Unit = "minute"
    duration_s: Annotated[int, Field(ge=1, le=30 * 86_400)] = 3600


class PerIpLimit(WindowLimit):
    """The per-client-address limit; `public` routes only (anonymous traffic) unless apply_to: all."""

    algorithm: AlgorithmName = "token_bucket"
    apply_to: Literal["public", "all"] = "public"
    # None: no automatic ban.
    ban: BanConfig | None = None
    # New TCP connections per second per client address (the peer's address: no header is read before a
    # connection is accepted), a token bucket whose burst is the same number; None: not limited. Enforced by
    # Envoy's network rate limit filter, which asks this service once per new connection and closes the
    # connection when it is over (every listener, every route).
    new_connections_per_second: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    @model_validator(mode="after")
    def _ban_needs_a_limit(self) -> PerIpLimit:
        if self.ban is not None and self.unlimited:
            raise ValueError("`ban` needs a per-IP limit: it counts the requests that carry the per-IP descriptor")
        return self


class EndpointLimit(StrictModel):
    """A limit shared by every caller of one path (exact, query string ignored) or path prefix."""

    path: str | None = None
    prefix: str | None = None
    limit: WindowLimit

    @model_validator(mode="after")
    def _one(self) -> EndpointLimit:
        given = [v for v in (self.path, self.prefix) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of path, prefix")
        if not given[0].startswith("/"):
            raise ValueError("an endpoint path must start with '/'")
        return self

    @property
    def value(self) -> str:
        return self.path if self.path is not None else f"{self.prefix}*"


class RedisBackendConfig(StrictModel):
    url: Annotated[str, Field(pattern=r"^(redis|rediss|unix)://")]
    # true: `url` names one node of a Redis Cluster; the others are discovered.
    cluster: bool = False
    key_prefix: str = ""
    max_connections: Annotated[int, Field(ge=1, le=1024)] = 32


class MemoryStoreConfig(StrictModel):
    """The in-memory store (no `redis`): how many counters it keeps at most."""

    # Past the cap, expired counters go first, then the least recently charged live ones (each such
    # eviction restarts a counter early: rate_limit_memory_evictions_total). 100,000 counters take
    # about 20-40 MB; size it above the number of clients active within your longest window.
    max_keys: Annotated[int, Field(ge=1, le=100_000_000)] = 100_000


# Time kept back for an answer to travel back to Envoy, on top of the store's budget (min_time_left_ms).
ANSWER_RESERVE_MS = 10


class OverloadConfig(StrictModel):
    """Load shedding: the service answers within Envoy's deadline by its failure policy rather than late."""

    # A request picked up with less than this left of its gRPC deadline (Envoy sets it from
    # services.ratelimit.timeout_ms) is answered at once by its route's failure policy, not decided:
    # the service starts only work it can finish in time, and keeps its backlog under half of Envoy's
    # timeout, leaving the rest as slack for a stalled process. None: the larger of budget_ms + 10
    # and half of services.ratelimit.timeout_ms.
    min_time_left_ms: Annotated[int, Field(ge=0, le=10_000)] | None = None
    # Decisions waiting on the store at once; more are answered by the failure policy at once.
    max_in_flight: Annotated[int, Field(ge=1, le=1_000_000)] = 1024


class MeshDescriptor(StrictModel):
    """How one kind of descriptor a mesh's Envoy sends is read: as a tier plan, the per-IP or an endpoint limit.

    `match` names entries the descriptor must hold (value `*`: any value). Exactly one of:
    - `tier` (a plan name) or `tier_from` (the entry holding the tier name), with `user` (the entry holding
      the user id): the tier plan, per user;
    - `per_ip` (the entry holding the client address; a `/32` or `/128` mask is dropped): the per-IP limit;
    - `endpoint` (a path or prefix of `rate_limits.endpoints`): that endpoint's shared limit.
    """

    match: Annotated[dict[DescriptorKey, str], Field(min_length=1)]
    tier: Name | None = None
    tier_from: DescriptorKey | None = None
    user: DescriptorKey | None = None
    per_ip: DescriptorKey | None = None
    endpoint: str | None = None

    @model_validator(mode="after")
    def _one_reading(self) -> MeshDescriptor:
        kinds = [k for k in ("tier", "tier_from", "per_ip", "endpoint") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of tier, tier_from, per_ip, endpoint (got {kinds or 'none'})")
        if kinds[0] in ("tier", "tier_from") and self.user is None:
            raise ValueError("a tier reading needs `user`: the entry whose value is the user id")
        if kinds[0] not in ("tier", "tier_from") and self.user is not None:
            raise ValueError("`user` applies to tier and tier_from readings only")
        return self


class MeshDomain(StrictModel):
    """A mesh's rate limit domain whose descriptors are read as this gateway's (`rate_limits.mesh`)."""

    domain: Domain
    # In order; the first whose `match` holds reads a descriptor. A descriptor none reads is not limited.
    descriptors: Annotated[list[MeshDescriptor], Field(min_length=1)]


class RouteRateLimit(StrictModel):
    """A route's `rate_limit` field: its failure policy, when not the gateway's `rate_limits.failure_mode`."""

    failure_mode: Literal["allow", "deny"] | None = None


# The descriptor Envoy sends on a route whose failure policy differs from the gateway's: the service
# answers that request's failures (store down, shed under load) by it. No limit is ever configured on it.
FAILURE_MODE_KEY = "outrider_failure_mode"
# The descriptor of Envoy's network rate limit filter: one call per new connection, the peer's address
# (rate_limits.per_ip.new_connections_per_second).
CONNECTION_KEY = "connection_address"


class RateLimitsConfig(StrictModel):
    """Rate limits of the gateway; tier plans compile into the same model as envoyproxy/ratelimit files."""

    domain: Domain = "outrider"
    # No redis: counters live in the service's memory (one process; fine for `make run`).
    redis: RedisBackendConfig | None = None
    # Answer budget when Redis is slow or down; must stay well under services.ratelimit.timeout_ms.
    budget_ms: Annotated[int, Field(ge=1, le=5_000)] = 20
    # What a request gets when it cannot be decided (store down or slow, load shed): allow (OK) or deny
    # (429). Also Envoy's failure_mode_deny when the service is unreachable. A route may choose its own.
    failure_mode: Literal["allow", "deny"] = "allow"
    near_limit_ratio: Annotated[float, Field(gt=0, le=1)] = 0.8
    per_ip: PerIpLimit | None = None
    tiers: dict[Name, list[WindowLimit]] = Field(default_factory=dict)
    # Plan for a tier name no plan lists (None: such callers get no tier limit).
    unknown_tier: Name | None = None
    endpoints: list[EndpointLimit] = Field(default_factory=list)
    # envoyproxy/ratelimit YAML files, relative to the gateway config file. A directory stands for every
    # file under it (recursively, dot files and dot directories skipped), as the reference's runtime directory.
    files: list[ConfigPath] = Field(default_factory=list)
    memory: MemoryStoreConfig = MemoryStoreConfig()
    overload: OverloadConfig = OverloadConfig()
    # Domains of a mesh's Envoy (Istio, Envoy Gateway) whose descriptors map onto the plans above.
    mesh: list[MeshDomain] = Field(default_factory=list)
    # reference settings (rlload)
    # MERGE_DOMAIN_CONFIG: the same domain in two descriptor files is merged into one tree; off (the
    # reference's default), such a set is refused naming both files.
    merge_domains: bool = False
    # reference settings (rldecide)
    # STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT: a request refused by one counter charges none of the others
    # (off: every counter counts every request, as the reference's default).
    stop_increment_when_over_limit: bool = False
    # SHADOW_MODE (global): every over-limit answer is OK overall (statuses still say OVER_LIMIT), counted
    # in rate_limit_global_shadow_total.
    shadow_mode: bool = False
    # LIMIT_RESPONSE_HEADERS_ENABLED: RateLimit-Limit / -Remaining / -Reset on answers (on by default here).
    response_headers: bool = True
    # LOCAL_CACHE_SIZE_IN_BYTES: memory for remembering counters over their limit until they reset, which
    # spares the store those round trips; never changes a decision or a reported count. 0: off.
    local_cache_size_bytes: Annotated[int, Field(ge=0, le=1 << 34)] = 0
    # Where the limits are counted: `service` (ratelimit_service, Envoy's rate limit filter asks it per
    # request) or `local` (compiled into Envoy's local_ratelimit filter, ratelimit_service/local_limits.py:
    # no gRPC hop and no service process; counted per Envoy instance, token buckets instead of windows).
    # `outrider validate` refuses what local mode cannot express (check_local_mode).
    enforcement: Literal["service", "local"] = "service"
    # local mode: buckets kept per wildcard descriptor (one per user and window, one per client address),
    # least recently used dropped first (Envoy's max_dynamic_descriptors); a dropped bucket starts full again.
    local_max_dynamic_descriptors: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000

    @model_validator(mode="after")
    def _mesh_names(self) -> RateLimitsConfig:
        domains = [m.domain for m in self.mesh]
        if self.domain in domains or len(set(domains)) != len(domains):
            raise ValueError("mesh: each domain once, and not rate_limits.domain itself")
        endpoints = {e.path if e.path is not None else e.prefix for e in self.endpoints}
        for i, m in enumerate(self.mesh):
            for j, d in enumerate(m.descriptors):
                if d.tier is not None and d.tier not in self.tiers:
                    raise ValueError(f"mesh[{i}].descriptors[{j}].tier: no plan named '{d.tier}' in tiers")
                if d.per_ip is not None and self.per_ip is None:
                    raise ValueError(f"mesh[{i}].descriptors[{j}].per_ip: rate_limits.per_ip is not set")
                if d.endpoint is not None and d.endpoint not in endpoints:
                    raise ValueError(f"mesh[{i}].descriptors[{j}].endpoint: '{d.endpoint}' is not a path or "
                                     "prefix of rate_limits.endpoints")
        return self

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "reload_interval_s" in data:
            # It never did anything: standalone services poll their files every 0.5 s (the one kernel
            # watcher) and the control plane pushes changes. Refused rather than silently ignored.
            raise ValueError("`reload_interval_s` was removed: the service picks up file changes within "
                             "0.5 s and control-plane changes at once; delete the field")
        return data

    def min_time_left_ms(self, envoy_timeout_ms: int) -> int:
        """The overload threshold in effect (see OverloadConfig.min_time_left_ms)."""
        given = self.overload.min_time_left_ms
        if given is not None:
            return given
        return max(self.budget_ms + ANSWER_RESERVE_MS, envoy_timeout_ms // 2)

    @field_validator("tiers")
    @classmethod
    def _plans(cls, value: dict[str, list[WindowLimit]]) -> dict[str, list[WindowLimit]]:
        for tier, windows in value.items():
            units = [w.unit for w in windows if not w.unlimited]
            repeated = sorted({u for u in units if units.count(u) > 1 and u is not None})
            if repeated:
                raise ValueError(f"tier '{tier}' has two limits per {repeated[0]}")
        return value


class RateLimitServiceSettings(ServiceEndpoint):
    """`services.ratelimit`: where the rate limit service listens, and Envoy's deadline for it."""

    port: Port = 18082
    metrics_port: Port = 19082
    # Envoy's deadline for one ShouldRateLimit call (the service answers within rate_limits.budget_ms).
    timeout_ms: Annotated[int, Field(ge=5, le=10_000)] = 100
    # The ban admin API (ratelimit_service/admin.py): `GET /v1/bans`, `DELETE /v1/bans/{ip}` on
    # admin_address:admin_port with `Authorization: Bearer <token>`; no admin_port, no listener. The token:
    # the environment variable admin_token_env, else admin_token_file (relative to the config file's folder),
    # read at each call; with neither (or under 16 characters), every call is refused (503). Keep the address
    # on loopback or a pod network: the token is the only guard.
    admin_address: str = "127.0.0.1"
    admin_port: Port | None = None
    admin_token_env: Annotated[str, Field(min_length=1, max_length=128)] = "OUTRIDER_RATELIMIT_ADMIN_TOKEN"
    admin_token_file: ConfigPath | None = None


def rate_limits_of(config: GatewayConfig) -> RateLimitsConfig | None:
    """The `rate_limits` section; None when the gateway limits nothing (no filter, no service)."""
    return section(config, "rate_limits", RateLimitsConfig)


def settings_of(config: GatewayConfig) -> RateLimitServiceSettings:
    return service_settings(config, SERVICE, RateLimitServiceSettings)


def check_rate_limits(config: GatewayConfig) -> Iterator[Problem]:
    """Cross-reference rules of `rate_limits`: plans named, budget under Envoy's deadline, endpoints
    served by a route (the descriptor files: file_set.check_files)."""
    rl = rate_limits_of(config)
    if rl is None:
        return
    if rl.unknown_tier is not None and rl.unknown_tier not in rl.tiers:
        yield ("rate_limits", "unknown_tier"), f"no plan named '{rl.unknown_tier}' in tiers"
    service = settings_of(config)
    if rl.budget_ms >= service.timeout_ms:
        yield (("rate_limits", "budget_ms"), f"budget {rl.budget_ms} ms must be below "
               f"services.ratelimit.timeout_ms ({service.timeout_ms} ms)")
    elif rl.min_time_left_ms(service.timeout_ms) >= service.timeout_ms:
        # Every request Envoy sends would be shed on arrival.
        yield (("rate_limits", "overload", "min_time_left_ms"),
               f"{rl.min_time_left_ms(service.timeout_ms)} ms must be below "
               f"services.ratelimit.timeout_ms ({service.timeout_ms} ms)")
    paths = [e.value for e in rl.endpoints]
    for index, endpoint in enumerate(rl.endpoints):
        if paths.count(endpoint.value) > 1:
            yield ("rate_limits", "endpoints", index), f"endpoint '{endpoint.value}' is limited twice"
        if not any(route_covers(route, endpoint) for route in config.routes if route.upstream is not None):
            yield (("rate_limits", "endpoints", index),
                   f"no route with an upstream serves '{endpoint.path or endpoint.prefix}'")
    # rate_limits.files: ratelimit_service/file_set.py (check_files), which parses with this module's models.
    if rl.enforcement == "local":
        yield from check_local_mode(rl, config)


def _windows(rl: RateLimitsConfig) -> Iterator[tuple[tuple[str | int, ...], WindowLimit]]:
    """Every limit of the section with its field path."""
    if rl.per_ip is not None:
        yield ("rate_limits", "per_ip"), rl.per_ip
    for tier, windows in rl.tiers.items():
        for index, window in enumerate(windows):
            yield ("rate_limits", "tiers", tier, index), window
    for index, endpoint in enumerate(rl.endpoints):
        yield ("rate_limits", "endpoints", index, "limit"), endpoint.limit


def check_local_mode(rl: RateLimitsConfig, config: GatewayConfig) -> Iterator[Problem]:
    """What `enforcement: local` cannot express: refused with the field, never silently dropped.

    Envoy's local_ratelimit has token buckets per Envoy instance and nothing else
    (api/envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto): no store, no shadow
    answer per descriptor, no ban, no other domain's descriptors, no per-connection call.
    """
    base = ("rate_limits",)
    why = "not expressible in enforcement: local (Envoy's local_ratelimit)"
    if rl.redis is not None:
        yield (*base, "redis"), (f"{why}: counters live in each Envoy, not in a store; use enforcement: "
                                 "service to share counters between replicas")
    if rl.files:
        yield (*base, "files"), (f"{why}: descriptor files are answered by ratelimit_service only; put tier, "
                                 "per-IP and endpoint limits in rate_limits.tiers / per_ip / endpoints")
    if rl.mesh:
        yield (*base, "mesh"), f"{why}: a mesh's descriptors are answered by ratelimit_service only"
    if rl.shadow_mode:
        yield (*base, "shadow_mode"), f"{why}: local_ratelimit has no shadow answer"
    if rl.stop_increment_when_over_limit:
        yield ((*base, "stop_increment_when_over_limit"),
               f"{why}: Envoy takes a request's buckets one by one, so a refused request stays charged to "
               "those taken before the empty one")
    if rl.local_cache_size_bytes:
        yield (*base, "local_cache_size_bytes"), f"{why}: a cache of the service's store"
    if rl.per_ip is not None:
        if rl.per_ip.ban is not None:
            yield (*base, "per_ip", "ban"), f"{why}: the automatic ban needs the service's store"
        if rl.per_ip.new_connections_per_second is not None:
            yield ((*base, "per_ip", "new_connections_per_second"),
                   f"{why}: Envoy's network local_ratelimit has one bucket per listener, not per address")
    for path, window in _windows(rl):
        if window.unlimited:
            continue
        if window.shadow_mode:
            yield (*path, "shadow_mode"), f"{why}: local_ratelimit has no shadow answer per limit"
        if window.algorithm == "sliding_window":
            yield ((*path, "algorithm"), f"{why}: local_ratelimit counts in token buckets; use fixed_window "
                   "(a bucket of the window's size, refilled over the window) or token_bucket")
        if window.requests_per_unit == 0:
            yield (*path, "requests_per_unit"), f"{why}: a bucket needs at least one token (max_tokens > 0)"
    for index, route in enumerate(config.routes):
        own = section(route, "rate_limit", RouteRateLimit)
        if own is not None and own.failure_mode is not None:
            yield (("routes", index, "rate_limit", "failure_mode"),
                   f"{why}: nothing can fail in Envoy's own buckets (no service, no store)")


def rl_has_generated(rl: RateLimitsConfig) -> bool:
    return bool(rl.per_ip or rl.tiers or rl.endpoints)


def generated_keys(rl: RateLimitsConfig) -> set[str]:
    keys = {f"tier_{t}" for t in rl.tiers} | {f"endpoint_{e.value}" for e in rl.endpoints}
    if rl.per_ip is not None:
        keys.add("remote_address")
    if rl.unknown_tier is not None:
        keys.add("tier")
    return keys


def route_failure_mode(route: RouteConfig, rl: RateLimitsConfig) -> str:
    """The route's failure policy: its own `rate_limit.failure_mode`, else the gateway's."""
    own = section(route, "rate_limit", RouteRateLimit)
    return own.failure_mode if own is not None and own.failure_mode is not None else rl.failure_mode


def route_covers(route: RouteConfig, endpoint: EndpointLimit) -> bool:
    match = route.match
    target = endpoint.path if endpoint.path is not None else endpoint.prefix
    assert target is not None
    if match.prefix is not None:
        inside = endpoint.prefix is not None and str(match.prefix).startswith(target)
        return target.startswith(str(match.prefix)) or inside
    if match.path is not None:
        path = str(match.path)
        return target == path if endpoint.path is not None else path.startswith(target)
    try:
        return re.fullmatch(str(match.regex), target) is not None
    except re.error:
        return False
