"""Composition root of ext_authz: config → verifier, key sources, cache, RBAC → gRPC server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from ext_authz.metrics import CONFIG_RELOADS
from ext_authz.resource import Policy, build_policy, payload
from ext_authz.service import AuthorizationService
from outrider.config import ConfigError, GatewayConfig, load_config
from outrider.config.watch import FileChangeDetector
from outrider.grpc_runtime import serve
from outrider.logs import DecisionLog
from outrider.metrics import start_metrics_server
from outrider.service_main import cancel_tasks, service_main

log = logging.getLogger("ext_authz")
SERVICE_NAME = "envoy.service.auth.v3.Authorization"


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
            policy = await build_policy(payload(config))
        except ConfigError as exc:
            CONFIG_RELOADS.labels(outcome="invalid").inc()
            log.error("config rejected; the running config stays",
                      extra={"problems": [issue.render(exc.filename) for issue in exc.issues]})
            return False
        except Exception as exc:  # e.g. a JWKS file that no longer parses
            CONFIG_RELOADS.labels(outcome="invalid").inc()
            log.error("config rejected; the running config stays", extra={"problems": [str(exc)]})
            return False
        if config.services.ext_authz != self._config.services.ext_authz:
            log.warning("services.ext_authz changed: ports and timeouts take effect after a restart")
        old, self.policy, self._config = self.policy, policy, config
        self._service.use(policy.authorizer)
        await cancel_tasks(old.tasks)
        CONFIG_RELOADS.labels(outcome="applied").inc()
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
    policy = await build_policy(payload(config))
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
