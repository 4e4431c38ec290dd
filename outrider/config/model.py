"""Typed model of the gateway config file; field-level rules live here, cross-references in semantic.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ext_proc.config import (
    CacheConfig,
    ExtProcService,
    RouteCacheConfig,
    TransformationsConfig,
    ValidationConfig,
)
from outrider.config.traffic import (
    CircuitBreaker,
    CorsPolicy,
    HashPolicy,
    HeaderMatch,
    HealthCheck,
    OutlierDetection,
    RetryPolicy,
    Rewrite,
)
from outrider.config.xds import XdsService
from ratelimit_service.config import RateLimitsConfig

Port = Annotated[int, Field(ge=1, le=65535)]
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Algorithm = Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "HS256"]
Action = Literal["read", "write", "delete", "*"]
DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = ("RS256",)


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenerConfig(StrictModel):
    name: Name
    address: str = "127.0.0.1"
    port: Port


class AdminConfig(StrictModel):
    """Envoy's admin interface; keep it on loopback."""

    address: str = "127.0.0.1"
    port: Port = 9901


class Endpoint(StrictModel):
    address: str
    port: Port
    weight: Annotated[int, Field(ge=1, le=128)] = 1


class UpstreamConfig(StrictModel):
    name: Name
    endpoints: Annotated[list[Endpoint], Field(min_length=1)]
    lb_policy: Literal["round_robin", "least_request", "random", "ring_hash", "maglev"] = "round_robin"
    connect_timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 1000
    hash_policy: list[HashPolicy] = Field(default_factory=list)  # ring_hash / maglev only
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    health_check: HealthCheck | None = None

    @model_validator(mode="after")
    def _hashing(self) -> UpstreamConfig:
        if self.hash_policy and self.lb_policy not in ("ring_hash", "maglev"):
            raise ValueError("hash_policy needs lb_policy ring_hash or maglev")
        return self


class RouteMatch(StrictModel):
    """Exactly one of prefix, path (exact) or regex (RE2, whole path)."""

    prefix: str | None = None
    path: str | None = None
    regex: str | None = None
    headers: list[HeaderMatch] = Field(default_factory=list)

    @model_validator(mode="after")
    def _exactly_one(self) -> RouteMatch:
        given = [k for k in ("prefix", "path", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of prefix, path, regex (got {given or 'none'})")
        for key in ("prefix", "path"):
            value = getattr(self, key)
            if value is not None and not value.startswith("/"):
                raise ValueError(f"{key} must start with '/'")
        return self


class DirectResponse(StrictModel):
    """A response Envoy gives itself, without an upstream."""

    status: Annotated[int, Field(ge=200, le=599)] = 200
    body: str = ""
    content_type: str = "application/json"


class RouteConfig(StrictModel):
    """One route. Protected unless `public: true`; a protected route names its RBAC resource."""

    name: Name
    match: RouteMatch
    upstream: Name | None = None
    direct_response: DirectResponse | None = None
    public: bool = False
    resource: Name | None = None
    timeout_ms: Annotated[int, Field(ge=1, le=600_000)] = 15_000
    idle_timeout_ms: Annotated[int, Field(ge=1, le=3_600_000)] | None = None
    rewrite: Rewrite | None = None
    retry: RetryPolicy | None = None
    cors: CorsPolicy | None = None
    # ext_proc: a section here overrides the fields it sets of the global section (see config/ext_proc.py).
    transformations: TransformationsConfig | None = None
    cache: RouteCacheConfig | None = None
    validation: ValidationConfig | None = None

    @model_validator(mode="after")
    def _target(self) -> RouteConfig:
        if (self.upstream is None) == (self.direct_response is None):
            raise ValueError("give exactly one of upstream, direct_response")
        if self.upstream is not None and not self.public and self.resource is None:
            raise ValueError("a protected route needs `resource` (the RBAC resource), or set `public: true`")
        if self.public and self.resource is not None:
            raise ValueError("a public route has no RBAC resource; drop `resource` or `public`")
        return self


class JwtProviderConfig(StrictModel):
    """Who may issue tokens, with which algorithms, and where their public keys are."""

    name: Name
    issuer: Annotated[str, Field(min_length=1)]
    audiences: list[str] = Field(default_factory=list)
    algorithms: Annotated[list[Algorithm], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS))
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwks_refresh_s: Annotated[float, Field(gt=0)] = 300.0
    jwks_cooldown_s: Annotated[float, Field(ge=0)] = 30.0
    # HS256 secrets never live in the config file: name an environment variable instead.
    hs256_secret_env: str | None = None
    roles_claim: str = "roles"
    tier_claim: str = "tier"
    email_claim: str = "email"
    default_tier: str = "free"

    @model_validator(mode="after")
    def _keys(self) -> JwtProviderConfig:
        asymmetric = [a for a in self.algorithms if a != "HS256"]
        if asymmetric and (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of jwks_file, jwks_url for the asymmetric algorithms")
        if "HS256" in self.algorithms and not self.hs256_secret_env:
            raise ValueError("HS256 needs hs256_secret_env (the variable holding the shared secret)")
        if self.hs256_secret_env and "HS256" not in self.algorithms:
            raise ValueError("hs256_secret_env is set but HS256 is not in algorithms")
        if self.jwks_url is not None and not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError("jwks_url must be an http(s) URL")
        return self


class AuthConfig(StrictModel):
    providers: Annotated[list[JwtProviderConfig], Field(min_length=1)]
    leeway_s: Annotated[float, Field(ge=0, le=300)] = 30.0
    max_token_bytes: Annotated[int, Field(ge=256, le=65_536)] = 8192
    token_cache_entries: Annotated[int, Field(ge=0)] = 10_000
    token_cache_ttl_s: Annotated[float, Field(ge=0)] = 300.0


class Grant(StrictModel):
    resource: Name | Literal["*"]
    actions: Annotated[list[Action], Field(min_length=1)]


class RbacConfig(StrictModel):
    roles: dict[Name, list[Grant]]


class ServiceEndpoint(StrictModel):
    """Where one outrider service listens (gRPC) and exposes /metrics."""

    address: str = "127.0.0.1"
    port: Port
    metrics_port: Port
    # Processes sharing the port (SO_REUSEPORT); the first one serves everyone's /metrics.
    workers: Annotated[int, Field(ge=1, le=32)] = 1


class ExtAuthzService(ServiceEndpoint):
    port: Port = 18081
    metrics_port: Port = 19081
    timeout_ms: Annotated[int, Field(ge=10, le=10_000)] = 250
    # Fail closed by default: an unreachable authorizer must never open the gateway.
    failure_mode_allow: bool = False


class RateLimitService(ServiceEndpoint):
    port: Port = 18082
    metrics_port: Port = 19082
    # Envoy's deadline for one ShouldRateLimit call (the service answers within rate_limits.budget_ms).
    timeout_ms: Annotated[int, Field(ge=5, le=10_000)] = 100


class DemoUpstreamService(StrictModel):
    """The demo upstream that `outrider run` starts (an endpoint of some upstream)."""

    enabled: bool = True
    address: str = "127.0.0.1"
    port: Port = 18080


class ServicesConfig(StrictModel):
    ext_authz: ExtAuthzService = Field(default_factory=ExtAuthzService)
    ratelimit: RateLimitService = Field(default_factory=RateLimitService)
    demo_upstream: DemoUpstreamService = Field(default_factory=DemoUpstreamService)
    xds: XdsService = Field(default_factory=XdsService)
    ext_proc: ExtProcService = Field(default_factory=ExtProcService)


class LoggingConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # One JSON line per decision; turn off for benchmarks that only want counters.
    decisions: bool = True


class GatewayConfig(StrictModel):
    """The whole gateway."""

    listeners: Annotated[list[ListenerConfig], Field(min_length=1)]
    admin: AdminConfig = Field(default_factory=AdminConfig)
    services: ServicesConfig = Field(default_factory=ServicesConfig)
    upstreams: list[UpstreamConfig] = Field(default_factory=list)
    routes: Annotated[list[RouteConfig], Field(min_length=1)]
    auth: AuthConfig
    rbac: RbacConfig
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    rate_limits: RateLimitsConfig | None = None
    transformations: TransformationsConfig | None = None
    cache: CacheConfig | None = None
    validation: ValidationConfig | None = None
