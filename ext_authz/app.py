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
    """

    health_names = (SERVICE_NAME,)

    def __init__(self, _settings: StartupSettings | None = None) -> None:
        self.decision_log = DecisionLog("ext_authz")
        self.service = AuthorizationService(None, self.decision_log)
        self.policy: Policy | None = None
        self.version: str | None = None
        self._flusher = asyncio.create_task(self.decision_log.run_flusher())

    def register(self, server: grpc.aio.Server) -> None:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self.service, server)

    async def apply(self, version: str, payload: Mapping[str, Any]) -> None:
        try:
            policy = await build_policy(payload)
        except (JwksError, ValueError) as exc:  # PayloadError is a ValueError; so are bad provider settings
            raise ConfigRejected(str(exc)) from None
        old, self.policy, self.version = self.policy, policy, version
        self.service.use(policy.authorizer)
        self.decision_log.enabled = policy.decisions_logged
        if old is not None:
            await cancel_tasks(old.tasks)  # the old key sources stop polling and fetching
        log.info("config version live", extra={"version": version, "providers": sorted(policy.keys.sources)})

    async def close(self) -> None:
        tasks = [self._flusher, *(self.policy.tasks if self.policy is not None else [])]
        await cancel_tasks(tasks)


SPEC = ServiceSpec(PLUGIN, "outrider ext_authz service", AuthzRuntime)


def main(argv: list[str] | None = None) -> None:
    run_main(SPEC, argv)
