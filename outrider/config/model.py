"""The kernel's typed model of the gateway config: listeners, routes, upstreams, services, logging.

Service plugins add their own sections, route fields and `services.<name>` settings (see
outrider/config/extensions.py); the model the loader validates with is built from both (schema.py).
Field-level rules live here, cross-references in semantic.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from outrider.config.base import BodyText, HeaderValue, Re2Regex

# Re-exported: the services' models are built from the same blocks.
from outrider.config.base import Name as Name
from outrider.config.base import Port as Port
from outrider.config.base import StrictModel as StrictModel
from outrider.config.edge import EdgeConfig
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
from outrider.tracing import parse_endpoint


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
    regex: Re2Regex | None = None
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
    body: BodyText = ""
    content_type: HeaderValue = "application/json"


class RouteConfig(StrictModel):
    """One route. Protected unless `public: true`; a protected route names its RBAC resource.

    Whether a route is protected is the kernel's: it strips client-sent identity headers where nothing
    checks, and every service keys on it (the authorizer, the rate limiter's per-IP and tier plans).
    """

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
    # `;` path parameters (/a;jsessionid=1) reach this route's upstream; every other route refuses them
    # (400), since upstreams that strip them resolve /public/..;/admin into /admin (see outrider/path_policy.py).
    allow_path_parameters: bool = False

    @model_validator(mode="after")
    def _target(self) -> RouteConfig:
        if (self.upstream is None) == (self.direct_response is None):
            raise ValueError("give exactly one of upstream, direct_response")
        if self.upstream is not None and not self.public and self.resource is None:
            raise ValueError("a protected route needs `resource` (the RBAC resource), or set `public: true`")
        if self.public and self.resource is not None:
            raise ValueError("a public route has no RBAC resource; drop `resource` or `public`")
        return self


class ServiceEndpoint(StrictModel):
    """Where one outrider service listens (gRPC) and exposes /metrics."""

    address: str = "127.0.0.1"
    port: Port
    metrics_port: Port
    # Processes sharing the port (SO_REUSEPORT); the first one serves everyone's /metrics.
    workers: Annotated[int, Field(ge=1, le=32)] = 1


class DemoUpstreamService(StrictModel):
    """The demo upstream that `outrider run` starts (an endpoint of some upstream)."""

    enabled: bool = True
    address: str = "127.0.0.1"
    port: Port = 18080


class ServicesConfig(StrictModel):
    """The processes the kernel itself knows; each service plugin adds `services.<its name>`."""

    demo_upstream: DemoUpstreamService = Field(default_factory=DemoUpstreamService)
    xds: XdsService = Field(default_factory=XdsService)


class AccessLogConfig(StrictModel):
    """Envoy's access log, one JSON line per request (outrider/envoy_access_log.py)."""

    enabled: bool = True
    # None: Envoy's stdout. A file must be an absolute path: Envoy resolves a relative one from wherever it runs.
    path: str | None = None

    @model_validator(mode="after")
    def _absolute(self) -> AccessLogConfig:
        if self.path is not None and (not self.path.startswith("/") or "\0" in self.path):
            raise ValueError(f"path must be an absolute file path (got {self.path!r})")
        return self


class TracingConfig(StrictModel):
    """Envoy's OpenTelemetry tracer (outrider/envoy_tracing.py); on when an endpoint is known."""

    # The share of requests Envoy starts a trace for (a request with a sampled traceparent is always traced).
    sampling_percent: float = Field(default=10.0, ge=0.0, le=100.0)
    # The OTLP/gRPC collector (http://host:4317). None: OTEL_EXPORTER_OTLP_ENDPOINT of the process that
    # compiles Envoy's config; tracing is off when neither is set.
    endpoint: str | None = None
    # How often Envoy sends its buffered spans (runtime tracing.opentelemetry.flush_interval_ms; Envoy's 5 s).
    flush_interval_ms: int = Field(default=1000, ge=10, le=60_000)

    @model_validator(mode="after")
    def _endpoint(self) -> TracingConfig:
        if self.endpoint is not None:
            parse_endpoint(self.endpoint, "endpoint")
        return self


class LoggingConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # One JSON line per decision; turn off for benchmarks that only want counters.
    decisions: bool = True
    access_log: AccessLogConfig = Field(default_factory=AccessLogConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)


# The routes field, shared with the model schema.py extends (which swaps in the plugins' route model).
ROUTES_MIN_LENGTH = 1


class GatewayConfig(StrictModel):
    """The kernel's part of the gateway; a loaded config is an instance of the subclass that the plugins'
    sections extend (outrider.config.schema.gateway_model), so `GatewayConfig` stays the type to annotate."""

    listeners: Annotated[list[ListenerConfig], Field(min_length=1)]
    admin: AdminConfig = Field(default_factory=AdminConfig)
    services: ServicesConfig = Field(default_factory=ServicesConfig)
    upstreams: list[UpstreamConfig] = Field(default_factory=list)
    routes: Annotated[list[RouteConfig], Field(min_length=ROUTES_MIN_LENGTH)]
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    edge: EdgeConfig = Field(default_factory=EdgeConfig)
