"""ext_authz's service plugin (entry point `outrider.services`): its config sections, Envoy filter, process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ext_authz import devcli, native, resource
from ext_authz.config import (
    SERVICE,
    AuthConfig,
    ExtAuthzService,
    RbacConfig,
    auth_warnings,
    check_auth,
    settings_of,
)
from ext_authz.envoy import ExtAuthzContribution
from ext_authz.explain import explain as explain_route
from outrider.config.errors import Problem
from outrider.config.extensions import Section
from outrider.config.model import GatewayConfig, RouteConfig
from outrider.plugins import CliCommand, ServicePlugin
from outrider.process import ManagedProcess
from outrider.service_process import service_process
from outrider.service_resource import EXT_AUTHZ_TYPE_URL


@dataclass(frozen=True)
class ExtAuthzPlugin:
    name: str = SERVICE
    type_url: str = EXT_AUTHZ_TYPE_URL
    # Where its ServiceSpec is, for `python -m outrider.combined` (a name, not an import: app imports us).
    service_spec_path: str = "ext_authz.app:SPEC"
    # First of the services' filters: the rate limiter keys on the identity it leaves in metadata.
    filter_order: int = 100
    sections: Mapping[str, Section] = field(default_factory=lambda: {
        "auth": Section(AuthConfig, required=True),
        "rbac": Section(RbacConfig, required=True),
    })
    # A route's `public` / `resource` are the kernel's (every service keys on whether a route is protected);
    # `enforcement: native` has Envoy's own filters check it (ext_authz/native.py).
    route_fields: Mapping[str, Section] = field(
        default_factory=lambda: {"enforcement": Section(native.RouteEnforcement)})
    settings: type[ExtAuthzService] = ExtAuthzService
    # Reuses each unchanged route's JSON between versions (10,000 routes: see resource.PayloadJson).
    _payload_json: resource.PayloadJson = field(default_factory=resource.PayloadJson, repr=False, compare=False)

    def check(self, config: GatewayConfig) -> list[Problem]:
        return [*check_auth(config), *native.why_not(config)]

    def warnings(self, config: GatewayConfig) -> list[str]:
        return auth_warnings(config)

    def payload(self, config: GatewayConfig) -> Mapping[str, Any]:
        return resource.payload(config)

    def payload_json(self, config: GatewayConfig) -> str:
        return self._payload_json(config)

    def explain(self, route: RouteConfig, config: GatewayConfig) -> list[str]:
        """Why its filter runs on `route`, or not (`outrider explain-route`)."""
        return explain_route(route, config)

    def contribution(self) -> ExtAuthzContribution:
        return ExtAuthzContribution()

    def processes(self, config: GatewayConfig, config_path: Path) -> Sequence[ManagedProcess]:
        # Always: every protected route asks it, and without it Envoy fails closed.
        # With the control plane it is an ADS client of it (ready once it has applied a version).
        # Its /metrics is the pod's scrape target (deploy/kubernetes), so it also serves Envoy's, renamed.
        return [service_process(SERVICE, "ext_authz", settings_of(config), config, config_path,
                                from_control_plane=config.services.xds.enabled, serves_gateway_metrics=True)]

    def cli_commands(self) -> Sequence[CliCommand]:
        return [CliCommand("token", "print a DEVELOPMENT-ONLY token signed with the example key",
                           devcli.add_arguments, devcli.cmd_token)]


PLUGIN: ServicePlugin = ExtAuthzPlugin()
