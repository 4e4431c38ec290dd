"""Composition root of ext_authz: config versions (file or control plane) → policy → gRPC Check service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from ext_authz.jwks import JwksError
from ext_authz.plugin import PLUGIN
from ext_authz.resource import Policy, build_policy
from ext_authz.service import AuthorizationService
from outrider.logs import DecisionLog
from outrider.service_main import ServiceSpec, StartupSettings, cancel_tasks, run_main
from outrider.xds_client import ConfigRejected

log = logging.getLogger("ext_authz")
SERVICE_NAME = "envoy.service.auth.v3.Authorization"


class AuthzRuntime:
    """The live policy: apply() builds a version's policy aside, then swaps it in with one store.

    A Check reads the service's authorizer once, so checks in flight finish on the policy they
    started with; a version that cannot be built (bad payload, a key file that does not load) is
    refused and the running policy stays.

    `ready` (read by the kernel's runner, which gates gRPC health on it besides the first version) is
    set once the live policy has keys for every provider: a JWKS URL that has not answered yet keeps
    the service NOT_SERVING, so Envoy's /health/ready and `outrider run` wait — as Envoy's own
    jwt_authn activates its listener only after the initial JWKS fetch (RemoteJwks.async_fetch).
    Once ready, a version whose new providers get no keys within the first fetch is refused (NACK)
    rather than taking the service out of rotation; before that, a newer version replaces the
    waiting one and the wait goes on with it.
    """

    health_names = (SERVICE_NAME,)

    def __init__(self, _settings: StartupSettings | None = None) -> None:
        self.decision_log = DecisionLog("ext_authz")
        self.service = AuthorizationService(None, self.decision_log)
        self.policy: Policy | None = None
        self.version: str | None = None
        self.ready = asyncio.Event()
        self._flusher = asyncio.create_task(self.decision_log.run_flusher())
        self._ready_watch: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self.service, server)

    async def apply(self, version: str, payload: Mapping[str, Any]) -> None:
        try:
            policy = await build_policy(payload, self.policy)
        except (JwksError, ValueError) as exc:  # PayloadError is a ValueError; so are bad provider settings
            raise ConfigRejected(str(exc)) from None
        if self.ready.is_set() and not policy.keys.ready.is_set():
            await cancel_tasks(policy.tasks)
            raise ConfigRejected(f"no signing keys could be loaded for provider(s) {', '.join(policy.keys.missing)}; "
                                 "the live version stays")
        old, self.policy, self.version = self.policy, policy, version
        self.service.use(policy.authorizer)
        self.decision_log.enabled = policy.decisions_logged
        if old is not None:
            await cancel_tasks(old.tasks)  # the old key sources stop polling and fetching
        self._watch_ready(policy)
        log.info("config version live", extra={"version": version, "providers": sorted(policy.keys.sources)})

    def _watch_ready(self, policy: Policy) -> None:
        if self._ready_watch is not None:
            self._ready_watch.cancel()
        if policy.keys.ready.is_set():
            self.ready.set()
            return
        log.warning("NOT_SERVING until keys are loaded", extra={"providers": policy.keys.missing})

        async def when_ready() -> None:
            await policy.keys.ready.wait()
            if self.policy is policy:
                log.info("keys loaded for every provider; ready")
                self.ready.set()

        self._ready_watch = asyncio.create_task(when_ready())

    async def close(self) -> None:
        tasks = [self._flusher, *(self.policy.tasks if self.policy is not None else [])]
        if self._ready_watch is not None:
            tasks.append(self._ready_watch)
        await cancel_tasks(tasks)


SPEC = ServiceSpec(PLUGIN, "outrider ext_authz service", AuthzRuntime)


def main(argv: list[str] | None = None) -> None:
    run_main(SPEC, argv)
