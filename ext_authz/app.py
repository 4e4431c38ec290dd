"""Composition root of ext_authz: config → verifier, key sources, cache, RBAC → gRPC server."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from ext_authz.decision import Authorizer, PathRule
from ext_authz.jwks import JwksFileSource, JwksUrlSource, KeySet
from ext_authz.jwt_verifier import ProviderSettings, TokenVerifier
from ext_authz.metrics import service_metrics
from ext_authz.rbac import Grant, RbacPolicy
from ext_authz.service import AuthorizationService
from ext_authz.token_cache import TokenCache
from outrider.config import ConfigError, GatewayConfig, load_config
from outrider.config.watch import FileChangeDetector
from outrider.grpc_runtime import serve
from outrider.logs import DecisionLog
from outrider.metrics import start_metrics_server
from outrider.service_main import cancel_tasks, service_main

log = logging.getLogger("ext_authz")
SERVICE_NAME = "envoy.service.auth.v3.Authorization"


def provider_settings(config: GatewayConfig) -> list[ProviderSettings]:
    settings = []
    for p in config.auth.providers:
        secret = os.environ.get(p.hs256_secret_env, "").encode() if p.hs256_secret_env else None
        settings.append(ProviderSettings(
            name=p.name, issuer=p.issuer, audiences=tuple(p.audiences), algorithms=tuple(p.algorithms),
            hs256_secret=secret or None, leeway_s=config.auth.leeway_s, roles_claim=p.roles_claim,
            tier_claim=p.tier_claim, email_claim=p.email_claim, default_tier=p.default_tier,
        ))
    return settings


def rbac_policy(config: GatewayConfig) -> RbacPolicy:
    return RbacPolicy({
        role: [Grant(g.resource, frozenset(g.actions)) for g in grants]
        for role, grants in config.rbac.roles.items()
    })


def fallback_rules(config: GatewayConfig) -> list[PathRule]:
    """The config's routes as path rules, for Envoy configs that send no context_extensions."""
    rules = []
    for route in config.routes:
        if route.upstream is None:
            continue
        regex = re.compile(route.match.regex) if route.match.regex is not None else None
        rules.append(PathRule(route.match.prefix, route.match.path, regex,
                              None if route.public else route.resource))
    return rules


class KeyManager:
    """Owns one key source per provider and feeds rotations into the verifier and the cache."""

    def __init__(self, config: GatewayConfig, verifier: TokenVerifier, cache: TokenCache) -> None:
        self._verifier = verifier
        self._cache = cache
        self.sources: dict[str, JwksFileSource | JwksUrlSource] = {}
        for p in config.auth.providers:
            on_keys = self._on_keys_for(p.name)
            if p.jwks_file is not None:
                self.sources[p.name] = JwksFileSource(p.jwks_file, on_keys, poll_interval_s=1.0)
            elif p.jwks_url is not None:
                self.sources[p.name] = JwksUrlSource(p.jwks_url, on_keys, refresh_interval_s=p.jwks_refresh_s,
                                                     cooldown_s=p.jwks_cooldown_s)

    def _on_keys_for(self, provider: str) -> Callable[[KeySet], None]:
        def on_keys(keys: KeySet) -> None:
            self._verifier.set_keys(provider, keys)
            # A removed key must stop working now, not when cached tokens expire.
            self._cache.clear()
            service_metrics().jwks_refreshes.labels(provider=provider).inc()
            log.info("keys loaded", extra={"provider": provider, "kids": sorted(str(k) for k in keys.keys)})
        return on_keys

    async def load_all(self) -> None:
        for name, source in self.sources.items():
            if isinstance(source, JwksFileSource):
                source.load_now()  # a missing or broken key file at start is a config error: fail loudly
            elif await source.load_now() is None:
                log.warning("initial JWKS fetch failed; retrying in the background", extra={"provider": name})

    def request_refresh(self, provider: str) -> None:
        source = self.sources.get(provider)
        if source is not None:
            source.request_refresh()


@dataclass
class Policy:
    """Everything a Check needs that comes from the config; replaced whole on a reload."""

    authorizer: Authorizer
    keys: KeyManager
    tasks: list[asyncio.Task[None]]


async def build_policy(config: GatewayConfig) -> Policy:
    """Verifier, keys (loaded now), token cache and RBAC for one config; raises if the keys cannot load."""
    verifier = TokenVerifier(provider_settings(config), max_token_bytes=config.auth.max_token_bytes)
    cache = TokenCache(max_entries=config.auth.token_cache_entries, max_ttl_s=config.auth.token_cache_ttl_s)
    keys = KeyManager(config, verifier, cache)
    await keys.load_all()
    authorizer = Authorizer(verifier, cache, rbac_policy(config), fallback_rules(config),
                            on_unknown_key=keys.request_refresh)
    tasks = [asyncio.create_task(source.run()) for source in keys.sources.values()]
    return Policy(authorizer, keys, tasks)


class PolicyReloader:
    """Polls the config file; a valid change swaps in a new policy, anything else keeps the running one."""

    def __init__(self, path: Path, config: GatewayConfig, policy: Policy, service: AuthorizationService,
                 interval_s: float = 1.0) -> None:
        self._path = path
        self._config = config
        self.policy = policy
        self._service = service
        self._interval_s = interval_s
        self._files = FileChangeDetector([path])

    async def reload_if_changed(self) -> bool:
        if not self._files.changed():
            return False
        try:
            config = load_config(self._path)
            policy = await build_policy(config)
        except ConfigError as exc:
            service_metrics().config_reloads.labels(outcome="invalid").inc()
            log.error("config rejected; the running config stays",
                      extra={"problems": [issue.render(exc.filename) for issue in exc.issues]})
            return False
        except Exception as exc:  # e.g. a JWKS file that no longer parses
            service_metrics().config_reloads.labels(outcome="invalid").inc()
            log.error("config rejected; the running config stays", extra={"problems": [str(exc)]})
            return False
        if config.services.ext_authz != self._config.services.ext_authz:
            log.warning("services.ext_authz changed: ports and timeouts take effect after a restart")
        old, self.policy, self._config = self.policy, policy, config
        self._service.use(policy.authorizer)
        await cancel_tasks(old.tasks)
        service_metrics().config_reloads.labels(outcome="applied").inc()
        log.info("config reloaded", extra={"file": str(self._path)})
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.reload_if_changed()
            except Exception:  # a watcher that dies silently would be worse than a logged failure
                log.exception("config reload failed")


async def run_service(config: GatewayConfig, config_path: Path) -> None:
    policy = await build_policy(config)
    decision_log = DecisionLog("ext_authz", enabled=config.logging.decisions)
    service = AuthorizationService(policy.authorizer, decision_log)
    reloader = PolicyReloader(config_path, config, policy, service)
    tasks = [asyncio.create_task(decision_log.run_flusher()), asyncio.create_task(reloader.run())]

    def register(server: grpc.aio.Server) -> None:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(service, server)

    settings = config.services.ext_authz
    start_metrics_server(settings.address, settings.metrics_port)
    try:
        await serve(register, settings.address, settings.port, [SERVICE_NAME])
    finally:
        await cancel_tasks([*tasks, *reloader.policy.tasks])


def main(argv: list[str] | None = None) -> None:
    service_main("ext_authz", "outrider ext_authz service", run_service, argv)
