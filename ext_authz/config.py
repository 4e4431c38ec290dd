"""ext_authz's part of the gateway config: the `auth` and `rbac` sections, `services.ext_authz`, their checks."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from outrider.config.base import ConfigPath, Name, Port, StrictModel
from outrider.config.errors import Problem
from outrider.config.extensions import required_section, service_settings
from outrider.config.model import GatewayConfig, ServiceEndpoint

SERVICE = "ext_authz"
Algorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
                    "HS256"]
Action = Literal["read", "write", "delete", "*"]
DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = ("RS256",)


class JwtProviderConfig(StrictModel):
    """Who may issue tokens, with which algorithms, and where their public keys are."""

    name: Name
    issuer: Annotated[str, Field(min_length=1)]
    audiences: list[str] = Field(default_factory=list)
    algorithms: Annotated[list[Algorithm], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS))
    jwks_file: ConfigPath | None = None
    jwks_url: str | None = None
    jwks_refresh_s: Annotated[float, Field(gt=0)] = 300.0
    jwks_cooldown_s: Annotated[float, Field(ge=0)] = 30.0
    # A JWKS is a few kilobytes; a bigger answer is refused unread rather than buffered.
    jwks_max_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 256 * 1024
    # DEVELOPMENT ONLY: lets jwks_url be plain http://, where anyone on the path can swap the keys.
    allow_insecure: bool = False
    # Tokens living longer than this (exp - iat, or exp - now without iat) are refused.
    max_lifetime_s: Annotated[float, Field(gt=0, le=366 * 86_400)] = 86_400.0
    # HS256 secrets never live in the config file: name an environment variable instead.
    hs256_secret_env: str | None = None
    # The kid of that secret: a token naming another kid is refused (unset: the secret is a key without
    # kid, tried whatever kid a token names, as jwt_verify_lib does with a JWK without kid).
    hs256_kid: Annotated[str, Field(min_length=1)] | None = None
    # Accepted `typ` header values, case-insensitive, `application/` optional (RFC 7515 §4.1.9, RFC 8725
    # §3.11); unset or empty: not checked. E.g. "JWT" or ["JWT", "at+jwt"].
    required_typ: Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list)
    roles_claim: str = "roles"
    tier_claim: str = "tier"
    email_claim: str = "email"
    default_tier: str = "free"

    @property
    def typ_values(self) -> tuple[str, ...]:
        return (self.required_typ,) if isinstance(self.required_typ, str) else tuple(self.required_typ)

    @model_validator(mode="after")
    def _keys(self) -> JwtProviderConfig:
        asymmetric = [a for a in self.algorithms if a != "HS256"]
        if asymmetric and (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of jwks_file, jwks_url for the asymmetric algorithms")
        if "HS256" in self.algorithms and not self.hs256_secret_env:
            raise ValueError("HS256 needs hs256_secret_env (the variable holding the shared secret)")
        if self.hs256_secret_env and "HS256" not in self.algorithms:
            raise ValueError("hs256_secret_env is set but HS256 is not in algorithms")
        if self.hs256_kid is not None and "HS256" not in self.algorithms:
            raise ValueError("hs256_kid is set but HS256 is not in algorithms")
        if self.jwks_url is not None:
            check_jwks_url(self.jwks_url, self.allow_insecure)
        return self


def check_jwks_url(url: str, allow_insecure: bool) -> None:
    """https:// with a host; http:// only when the provider allows it (development only)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("jwks_url must be an https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("jwks_url must not carry credentials")
    if parts.scheme == "http" and not allow_insecure:
        raise ValueError("jwks_url must be https:// (plain http:// lets anyone on the network path replace the "
                         "signing keys); set allow_insecure: true to allow it — DEVELOPMENT ONLY")


class FailureBudgetConfig(StrictModel):
    """Refused tokens a client may send (a token bucket per client address); past it, 429 without verifying."""

    enabled: bool = True
    burst: Annotated[int, Field(ge=1, le=100_000)] = 20
    per_second: Annotated[float, Field(gt=0, le=100_000)] = 2.0
    max_clients: Annotated[int, Field(ge=1, le=1_000_000)] = 16_384  # ~4 MB when full


class AuthConfig(StrictModel):
    providers: Annotated[list[JwtProviderConfig], Field(min_length=1)]
    leeway_s: Annotated[float, Field(ge=0, le=300)] = 30.0
    max_token_bytes: Annotated[int, Field(ge=256, le=65_536)] = 8192
    token_cache_entries: Annotated[int, Field(ge=0)] = 10_000
    token_cache_ttl_s: Annotated[float, Field(ge=0)] = 300.0
    # Refused tokens remembered (by SHA-256) so a replayed bad token costs no signature check.
    negative_cache_entries: Annotated[int, Field(ge=0, le=1_000_000)] = 10_000
    negative_cache_ttl_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    failure_budget: FailureBudgetConfig = FailureBudgetConfig()
    # native enforcement (native helper)
    # How protected routes without their own `enforcement` are checked: python (ext_authz) or native (Envoy's
    # jwt_authn + rbac filters; ext_authz/native.py, README "Native enforcement").
    enforcement: Literal["python", "native"] = "python"


class Grant(StrictModel):
    resource: Name | Literal["*"]
    actions: Annotated[list[Action], Field(min_length=1)]


class RbacConfig(StrictModel):
    roles: dict[Name, list[Grant]]


class ExtAuthzService(ServiceEndpoint):
    """`services.ext_authz`: where the authorizer listens, and how Envoy treats it."""

    port: Port = 18081
    metrics_port: Port = 19081
    timeout_ms: Annotated[int, Field(ge=10, le=10_000)] = 250
    # Fail closed by default: an unreachable authorizer must never open the gateway.
    failure_mode_allow: bool = False


def auth_of(config: GatewayConfig) -> AuthConfig:
    return required_section(config, "auth", AuthConfig)


def rbac_of(config: GatewayConfig) -> RbacConfig:
    return required_section(config, "rbac", RbacConfig)


def settings_of(config: GatewayConfig) -> ExtAuthzService:
    return service_settings(config, SERVICE, ExtAuthzService)


def _duplicates(values: list[str]) -> set[str]:
    return {value for value, count in Counter(values).items() if count > 1}


def check_auth(config: GatewayConfig) -> Iterator[Problem]:
    """Rules across `auth`, `rbac` and the routes: unique providers, keys and secrets there, resources granted."""
    auth, rbac = auth_of(config), rbac_of(config)
    names = _duplicates([p.name for p in auth.providers])
    issuers = _duplicates([p.issuer for p in auth.providers])
    for index, provider in enumerate(auth.providers):
        if provider.name in names:
            yield ("auth", "providers", index, "name"), f"duplicate name '{provider.name}'"
        if provider.issuer in issuers:
            yield ("auth", "providers", index, "issuer"), f"issuer '{provider.issuer}' is used by two providers"
        if provider.jwks_file is not None and not provider.jwks_file.is_file():
            yield ("auth", "providers", index, "jwks_file"), f"file not found: {provider.jwks_file}"
        if provider.hs256_secret_env and not os.environ.get(provider.hs256_secret_env):
            yield (("auth", "providers", index, "hs256_secret_env"),
                   f"environment variable {provider.hs256_secret_env} is not set or empty")
        elif provider.hs256_secret_env and len(os.environ[provider.hs256_secret_env].encode()) < 32:
            # RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
            yield (("auth", "providers", index, "hs256_secret_env"),
                   f"the secret in {provider.hs256_secret_env} is shorter than 32 bytes")
    granted = {g.resource for grants in rbac.roles.values() for g in grants}
    for index, route in enumerate(config.routes):
        if route.resource is not None and route.resource not in granted and "*" not in granted:
            yield ("routes", index, "resource"), f"resource '{route.resource}' is granted to no role"


def auth_warnings(config: GatewayConfig) -> list[str]:
    """Valid settings that must not reach production: keys fetched over plain HTTP, audiences not checked."""
    warnings = []
    for index, provider in enumerate(auth_of(config).providers):
        where = f"auth.providers[{index}] ({provider.name})"
        if provider.allow_insecure and provider.jwks_url is not None and provider.jwks_url.startswith("http:"):
            warnings.append(f"{where}: allow_insecure fetches the signing keys over plain http:// "
                            f"({provider.jwks_url}); anyone on the network path can replace them — DEVELOPMENT ONLY")
        if not provider.audiences:
            # RFC 8725 §3.9: without an audience check, a token the issuer made for another service works here.
            warnings.append(f"{where}: audiences is empty, so 'aud' is not checked and a token the issuer "
                            "made for any other service is accepted here; list this gateway's audiences")
    return warnings
