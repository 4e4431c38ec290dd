"""Traffic settings of routes and upstreams: header matches, rewrites, retries, CORS, hashing, health."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from outrider.config.base import HeaderValue, Re2Regex

Ms = Annotated[int, Field(ge=1, le=3_600_000)]
Count = Annotated[int, Field(ge=1, le=1_000_000)]
HeaderName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^:?[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]
RetryOn = Literal[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
]


class _Strict(BaseModel):
    # Same rules as outrider.config.model.StrictModel (not imported: model.py imports this module).
    model_config = ConfigDict(extra="forbid", frozen=True)


def _exactly_one(model: BaseModel, keys: tuple[str, ...]) -> None:
    given = [k for k in keys if getattr(model, k) not in (None, False)]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(keys)} (got {given or 'none'})")


class HeaderMatch(_Strict):
    """A request header condition; `invert: true` matches when the condition does not hold."""

    name: HeaderName
    exact: HeaderValue | None = None
    prefix: HeaderValue | None = None
    regex: Re2Regex | None = None
    # Use `present: true, invert: true` for "header absent".
    present: Literal[True] | None = None
    invert: bool = False

    @model_validator(mode="after")
    def _one(self) -> HeaderMatch:
        _exactly_one(self, ("exact", "prefix", "regex", "present"))
        return self


class RegexRewrite(_Strict):
    pattern: Re2Regex
    substitution: str


class Rewrite(_Strict):
    """Path rewrite (prefix or regex, not both) and/or a new Host header before the upstream sees it."""

    prefix: str | None = None
    regex: RegexRewrite | None = None
    host: HeaderValue | None = None

    @model_validator(mode="after")
    def _some(self) -> Rewrite:
        if self.prefix is not None and self.regex is not None:
            raise ValueError("give at most one of prefix, regex")
        if self.prefix is None and self.regex is None and self.host is None:
            raise ValueError("give prefix, regex or host")
        return self


def _default_retry_on() -> list[RetryOn]:
    return ["5xx", "reset", "connect-failure"]


class RetryPolicy(_Strict):
    retry_on: Annotated[list[RetryOn], Field(min_length=1)] = Field(default_factory=_default_retry_on)
    num_retries: Annotated[int, Field(ge=1, le=10)] = 1
    per_try_timeout_ms: Ms | None = None
    retriable_status_codes: list[Annotated[int, Field(ge=100, le=599)]] = Field(default_factory=list)
    backoff_base_ms: Ms | None = None
    backoff_max_ms: Ms | None = None

    @model_validator(mode="after")
    def _codes(self) -> RetryPolicy:
        if self.retriable_status_codes and "retriable-status-codes" not in self.retry_on:
            raise ValueError("retriable_status_codes needs 'retriable-status-codes' in retry_on")
        if self.backoff_max_ms is not None and self.backoff_base_ms is None:
            raise ValueError("backoff_max_ms needs backoff_base_ms")
        if (
            self.backoff_base_ms is not None
            and self.backoff_max_ms is not None
            and self.backoff_max_ms < self.backoff_base_ms
        ):
            raise ValueError("backoff_max_ms must be at least backoff_base_ms")
        return self


class CorsPolicy(_Strict):
    """CORS answered by Envoy itself (preflights never reach the authorizer or the upstream)."""

    allow_origins: Annotated[list[Annotated[HeaderValue, Field(min_length=1)]], Field(min_length=1)]
    allow_methods: list[HeaderValue] = Field(default_factory=lambda: ["GET", "POST", "PUT", "DELETE", "OPTIONS"])
    allow_headers: list[HeaderValue] = Field(default_factory=lambda: ["authorization", "content-type"])
    expose_headers: list[HeaderValue] = Field(default_factory=list)
    max_age_s: Annotated[int, Field(ge=0, le=86_400)] = 600
    allow_credentials: bool = False

    @model_validator(mode="after")
    def _credentials(self) -> CorsPolicy:
        # Browsers refuse credentials with a wildcard origin; say so here rather than at 3 a.m.
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("allow_credentials cannot be used with the '*' origin")
        return self


class CookieHash(_Strict):
    """Hash on a cookie; with ttl_s, Envoy sets the cookie when the client has none (sticky sessions)."""

    name: Annotated[str, Field(min_length=1)]
    ttl_s: Annotated[int, Field(ge=0)] | None = None
    path: str | None = None


class HashPolicy(_Strict):
    """What a ring_hash/maglev upstream hashes on: one of header, cookie, source_ip."""

    header: HeaderName | None = None
    cookie: CookieHash | None = None
    source_ip: bool = False
    # Stop at this policy when it yields a hash (later ones are fallbacks only).
    terminal: bool = False

    @model_validator(mode="after")
    def _one(self) -> HashPolicy:
        _exactly_one(self, ("header", "cookie", "source_ip"))
        return self


class CircuitBreaker(_Strict):
    """Envoy's default-priority thresholds; beyond them requests fail fast with 503 (overflow)."""

    max_connections: Count | None = None
    max_pending_requests: Count | None = None
    max_requests: Count | None = None
    max_retries: Count | None = None


class OutlierDetection(_Strict):
    """Passive health: after consecutive errors an endpoint is ejected (base_ejection_time x ejections)."""

    consecutive_5xx: Count = 5
    consecutive_gateway_failure: Count | None = None
    interval_ms: Ms = 10_000
    base_ejection_time_ms: Ms = 30_000
    max_ejection_percent: Annotated[int, Field(ge=0, le=100)] = 10


class HealthCheck(_Strict):
    """Active HTTP health check: GET path on every endpoint; a failing endpoint gets no traffic."""

    path: Annotated[str, Field(pattern=r"^/")] = "/health"
    host: str | None = None
    interval_ms: Ms = 5_000
    timeout_ms: Ms = 1_000
    unhealthy_threshold: Annotated[int, Field(ge=1, le=100)] = 2
    healthy_threshold: Annotated[int, Field(ge=1, le=100)] = 1
    expected_statuses: list[Annotated[int, Field(ge=100, le=599)]] = Field(default_factory=lambda: [200])

    @model_validator(mode="after")
    def _timeout(self) -> HealthCheck:
        if self.timeout_ms > self.interval_ms:
            raise ValueError("timeout_ms must not exceed interval_ms")
        return self
