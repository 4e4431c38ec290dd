"""ext_authz's resource: its share of a gateway config as plain JSON (payload) and the policy built from it."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ext_authz.config import AuthConfig, FailureBudgetConfig, JwtProviderConfig, RbacConfig, auth_of, rbac_of
from ext_authz.decision import Authorizer
from ext_authz.failure_budget import FailureBudget
from ext_authz.fallback import DirectAnswer, HeaderCondition, PathRule
from ext_authz.jwks import KeySet
from ext_authz.jwks_sources import JwksFileSource, JwksUrlSource
from ext_authz.jwt_verifier import ProviderSettings, TokenVerifier
from ext_authz.metrics import service_metrics
from ext_authz.rbac import Grant, RbacPolicy
from ext_authz.token_cache import NegativeCache, TokenCache
from outrider.config.model import DirectResponse, GatewayConfig, Name, RouteConfig
from outrider.config.traffic import HeaderMatch
from outrider.service_resource import PerItemJson, canonical_json_with_items

log = logging.getLogger("ext_authz")

# Bumped when the payload's shape changes incompatibly; a service refuses a schema it does not know.
SCHEMA = 1


class PayloadError(ValueError):
    """A payload this service cannot apply; the message is the reason sent back in a NACK."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FallbackRule(_Strict):
    """One route of the gateway as a fallback rule: public, protected (resource) or answered directly."""

    prefix: str | None = None
    path: str | None = None
    regex: str | None = None
    public: bool = False
    resource: Name | None = None
    # The route's header conditions: the rule applies only when they hold (Envoy's first-match semantics).
    headers: list[HeaderMatch] = []
    # A route without an upstream: ext_authz answers it in the foreign Envoy's place (never forwarded).
    direct_response: DirectResponse | None = None
    allow_path_parameters: bool = False

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FallbackRule:
        given = [k for k in ("prefix", "path", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of prefix, path, regex (got {given or 'none'})")
        outcomes = [self.public, self.resource is not None, self.direct_response is not None]
        if outcomes.count(True) != 1:
            raise ValueError("a rule is exactly one of public, protecting a resource, or a direct_response")
        return self


class DecisionLogging(_Strict):
    decisions: bool = True


class ExtAuthzPayload(_Strict):
    """The validated payload: the same models the gateway config uses, so a bad one fails the same way."""

    auth: AuthConfig
    rbac: RbacConfig
    rules: list[FallbackRule]
    logging: DecisionLogging = DecisionLogging()


def _rule(route: RouteConfig) -> dict[str, Any]:
    """A route as a fallback rule. Every route is one: a direct-response route (a blocked path, a health
    path) must be answered as the gateway answers it, not fall through to a later, wider rule."""
    rule: dict[str, Any]
    if route.direct_response is not None:
        rule = {"direct_response": route.direct_response.model_dump(mode="json")}
    else:
        rule = {"public": route.public, "resource": route.resource}
    # Exactly one of these is set (RouteMatch validates it); the others stay out of the payload.
    for key in ("prefix", "path", "regex"):
        value = getattr(route.match, key)
        if value is not None:
            rule[key] = value
    if route.match.headers:
        rule["headers"] = [h.model_dump(mode="json", exclude_defaults=True) for h in route.match.headers]
    if route.allow_path_parameters:
        rule["allow_path_parameters"] = True
    return rule


def _head(config: GatewayConfig) -> dict[str, Any]:
    return {
        "auth": auth_of(config).model_dump(mode="json"),
        "rbac": rbac_of(config).model_dump(mode="json"),
        "logging": {"decisions": config.logging.decisions},
    }


def payload(config: GatewayConfig) -> dict[str, Any]:
    """Everything ext_authz needs from a validated config, as JSON values (jwks_file paths absolute)."""
    return {**_head(config), "rules": [_rule(route) for route in config.routes]}


class PayloadJson:
    """canonical_json(payload(config)), reusing the text of every route unchanged since the last call."""

    def __init__(self) -> None:
        self._rules = PerItemJson(_rule)

    def __call__(self, config: GatewayConfig) -> str:
        return canonical_json_with_items(_head(config), "rules", self._rules(config.routes))


def _reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse(data: Mapping[str, Any]) -> ExtAuthzPayload:
    """Validate a payload; raises PayloadError naming each bad field."""
    try:
        parsed = ExtAuthzPayload.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(f"invalid ext_authz payload: {_reason(exc)}") from None
    issuers = [p.issuer for p in parsed.auth.providers]
    if len(set(issuers)) != len(issuers):
        raise PayloadError("invalid ext_authz payload: two providers share an issuer")
    return parsed


def provider_settings(auth: AuthConfig) -> list[ProviderSettings]:
    settings = []
    for p in auth.providers:
        # HS256 secrets never travel in a payload: the variable is read in the service's environment.
        secret = os.environ.get(p.hs256_secret_env, "").encode() if p.hs256_secret_env else None
        settings.append(ProviderSettings(
            name=p.name, issuer=p.issuer, audiences=tuple(p.audiences), algorithms=tuple(p.algorithms),
            hs256_secret=secret or None, leeway_s=auth.leeway_s, roles_claim=p.roles_claim,
            tier_claim=p.tier_claim, email_claim=p.email_claim, default_tier=p.default_tier,
            max_lifetime_s=p.max_lifetime_s, hs256_kid=p.hs256_kid, required_typ=p.typ_values,
        ))
    return settings


def rbac_policy(rbac: RbacConfig) -> RbacPolicy:
    return RbacPolicy({
        role: [Grant(g.resource, frozenset(g.actions)) for g in grants]
        for role, grants in rbac.roles.items()
    })


def _condition(match: HeaderMatch) -> HeaderCondition:
    return HeaderCondition(match.name.lower(), match.exact, match.prefix,
                           re.compile(match.regex) if match.regex is not None else None,
                           bool(match.present), match.invert)


def fallback_rules(rules: list[FallbackRule]) -> list[PathRule]:
    """The routes as path rules, in order, for Envoy configs that send no context_extensions."""
    out = []
    for r in rules:
        direct = r.direct_response
        answer = DirectAnswer(direct.status, direct.body, direct.content_type) if direct is not None else None
        out.append(PathRule(r.prefix, r.path, re.compile(r.regex) if r.regex is not None else None,
                            r.resource, headers=tuple(map(_condition, r.headers)), answer=answer,
                            allow_parameters=r.allow_path_parameters))
    return out


KeySource = JwksFileSource | JwksUrlSource


def _origin(p: JwtProviderConfig) -> tuple[str, str] | None:
    """Where a provider's keys come from; two versions with the same origin share the last good keys."""
    if p.jwks_file is not None:
        return ("file", str(p.jwks_file))
    if p.jwks_url is not None:
        return ("url", p.jwks_url)
    return None


class KeyManager:
    """Owns one key source per provider and feeds rotations into the verifier and the caches.

    `ready` is set once every provider has keys (at once for HS256-only providers): until then the
    service's health stays NOT_SERVING, since every token of a provider without keys is refused.
    """

    def __init__(self, auth: AuthConfig, verifier: TokenVerifier, forget_tokens: Callable[[], None],
                 previous: KeyManager | None = None) -> None:
        self._verifier = verifier
        self._forget_tokens = forget_tokens
        self.sources: dict[str, KeySource] = {}
        self.origins: dict[str, tuple[str, str]] = {}
        self._loaded: set[str] = set()
        self.ready = asyncio.Event()
        for p in auth.providers:
            on_keys = self._on_keys_for(p.name)
            if p.jwks_file is not None:
                self.sources[p.name] = JwksFileSource(p.jwks_file, on_keys, poll_interval_s=1.0)
            elif p.jwks_url is not None:
                self.sources[p.name] = JwksUrlSource(
                    p.jwks_url, on_keys, refresh_interval_s=p.jwks_refresh_s, cooldown_s=p.jwks_cooldown_s,
                    max_bytes=p.jwks_max_bytes, allow_insecure=p.allow_insecure)
            origin = _origin(p)
            if origin is not None:
                self.origins[p.name] = origin
        if previous is not None:
            self._seed_from(previous)
        self._check_ready()

    def _seed_from(self, previous: KeyManager) -> None:
        # The same source as the live version's: start from its last good keys, so a new version never
        # has a window without keys (and an unreachable JWKS URL during a config push changes nothing).
        for name, source in self.sources.items():
            old = previous.sources.get(name)
            if old is not None and previous.origins.get(name) == self.origins.get(name) and old.current is not None:
                source.seed(old.current)

    def _on_keys_for(self, provider: str) -> Callable[[KeySet], None]:
        def on_keys(keys: KeySet) -> None:
            self._verifier.set_keys(provider, keys)
            # A removed key must stop working now, not when cached tokens expire; a refused token may
            # verify under a new key.
            self._forget_tokens()
            service_metrics().jwks_refreshes.labels(provider=provider).inc()
            log.info("keys loaded", extra={"provider": provider, "kids": sorted(str(k) for k in keys.keys)})
            self._loaded.add(provider)
            self._check_ready()
        return on_keys

    def _check_ready(self) -> None:
        if self._loaded >= self.sources.keys():
            self.ready.set()

    @property
    def missing(self) -> list[str]:
        """Providers without keys yet."""
        return sorted(self.sources.keys() - self._loaded)

    async def load_all(self) -> None:
        """First load of every source, side by side (so N unreachable URLs cost one fetch timeout, not N)."""
        files = [s for s in self.sources.values() if isinstance(s, JwksFileSource)]
        urls = {name: s for name, s in self.sources.items() if isinstance(s, JwksUrlSource)}
        for source in files:
            source.load_now()  # a missing or broken key file is a refused payload: fail loudly
        fetched = await asyncio.gather(*(source.fetch_once() for source in urls.values()))
        for name, ok in zip(urls, fetched, strict=True):
            if not ok:
                log.warning("initial JWKS fetch failed; retrying in the background", extra={"provider": name})

    def request_refresh(self, provider: str) -> None:
        source = self.sources.get(provider)
        if source is not None:
            source.request_refresh()


@dataclass
class Policy:
    """Everything a Check needs that comes from the config; replaced whole when a new version applies."""

    authorizer: Authorizer
    keys: KeyManager
    tasks: list[asyncio.Task[None]]
    decisions_logged: bool = True
    budget: tuple[FailureBudgetConfig, FailureBudget] | None = None


def _budget(settings: FailureBudgetConfig, previous: Policy | None) -> tuple[FailureBudgetConfig, FailureBudget] | None:
    if not settings.enabled:
        return None
    if previous is not None and previous.budget is not None and previous.budget[0] == settings:
        # Same settings: the clients' buckets carry over, so a config push does not reset a flooder.
        return previous.budget
    return settings, FailureBudget(settings.burst, settings.per_second, settings.max_clients)


async def build_policy(data: Mapping[str, Any], previous: Policy | None = None) -> Policy:
    """Verifier, keys (loaded now), caches, failure budget and RBAC for one payload.

    Keys of the providers whose source is unchanged start from `previous`'s last good ones. Raises
    PayloadError for a bad payload and JwksError for a key file that cannot be loaded; in both cases
    nothing is left running.
    """
    # Validating a large payload (a rule per route) runs beside the event loop that serves Checks.
    parsed = await asyncio.to_thread(parse, data)
    auth = parsed.auth
    verifier = TokenVerifier(provider_settings(auth), max_token_bytes=auth.max_token_bytes)
    cache = TokenCache(max_entries=auth.token_cache_entries, max_ttl_s=auth.token_cache_ttl_s)
    refused = NegativeCache(max_entries=auth.negative_cache_entries, ttl_s=auth.negative_cache_ttl_s)

    def forget_tokens() -> None:
        cache.clear()
        refused.clear()

    keys = KeyManager(auth, verifier, forget_tokens, previous.keys if previous is not None else None)
    await keys.load_all()
    budget = _budget(auth.failure_budget, previous)
    rules = await asyncio.to_thread(fallback_rules, parsed.rules)
    authorizer = Authorizer(verifier, cache, rbac_policy(parsed.rbac), rules,
                            on_unknown_key=keys.request_refresh, refused=refused,
                            budget=budget[1] if budget is not None else None)
    tasks = [asyncio.create_task(source.run()) for source in keys.sources.values()]
    return Policy(authorizer, keys, tasks, parsed.logging.decisions, budget)
