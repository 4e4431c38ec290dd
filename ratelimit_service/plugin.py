"""The rate limiter's service plugin (entry point `outrider.services`): its config section, filter, process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outrider.config.errors import Problem
from outrider.config.extensions import Section
from outrider.config.model import GatewayConfig, RouteConfig
from outrider.plugins import CliCommand, ServicePlugin
from outrider.process import ManagedProcess
from outrider.service_process import service_process
from outrider.service_resource import RATELIMIT_TYPE_URL, canonical_json
from ratelimit_service import file_set, resource
from ratelimit_service.config import (
    SERVICE,
    RateLimitsConfig,
    RateLimitServiceSettings,
    RouteRateLimit,
    check_rate_limits,
    rate_limits_of,
    settings_of,
)
from ratelimit_service.config_warnings import config_warnings
from ratelimit_service.envoy import RateLimitContribution
from ratelimit_service.explain import explain as explain_route
from ratelimit_service.explain import verdict as explain_verdict


@dataclass(frozen=True)
class RateLimitPlugin:
    name: str = SERVICE
    type_url: str = RATELIMIT_TYPE_URL
    # Where its ServiceSpec is, for `python -m outrider.combined` (a name, not an import: app imports us).
    service_spec_path: str = "ratelimit_service.app:SPEC"
    # After ext_authz (its descriptors carry the caller's tier and id from ext_authz's metadata).
    filter_order: int = 200
    sections: Mapping[str, Section] = field(default_factory=lambda: {"rate_limits": Section(RateLimitsConfig)})
    # A route's own failure policy (`rate_limit: {failure_mode: deny}`).
    route_fields: Mapping[str, Section] = field(default_factory=lambda: {"rate_limit": Section(RouteRateLimit)})
    settings: type[RateLimitServiceSettings] = RateLimitServiceSettings

    def check(self, config: GatewayConfig) -> list[Problem]:
        return [*check_rate_limits(config), *file_set.check_files(rate_limits_of(config))]

    def payload(self, config: GatewayConfig) -> Mapping[str, Any]:
        return resource.payload(config)

    def payload_json(self, config: GatewayConfig) -> str:
        return canonical_json(resource.payload(config))  # small: no route-sized list in it

    def warnings(self, config: GatewayConfig) -> list[str]:
        return config_warnings(config)

    def explain(self, route: RouteConfig, config: GatewayConfig) -> list[str]:
        """Why its filter runs on `route`, or not (`outrider explain-route`)."""
        return explain_route(route, config)

    def explain_verdict(self, route: RouteConfig, config: GatewayConfig) -> str | None:
        """The hop line when limits are counted in Envoy itself (enforcement: local), else None."""
        return explain_verdict(route, config)

    def contribution(self) -> RateLimitContribution:
        return RateLimitContribution()

    def processes(self, config: GatewayConfig, config_path: Path) -> Sequence[ManagedProcess]:
        rl = rate_limits_of(config)
        if rl is None or rl.enforcement == "local":
            return []  # nothing limited, or counted in Envoy (local_limits.py): no cluster, no process
        return [service_process(SERVICE, "ratelimit_service", settings_of(config), config, config_path,
                                from_control_plane=config.services.xds.enabled)]

    def cli_commands(self) -> Sequence[CliCommand]:
        from ratelimit_service.check_config import COMMAND

        return [COMMAND]


PLUGIN: ServicePlugin = RateLimitPlugin()
