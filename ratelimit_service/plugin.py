"""The rate limiter's service plugin (entry point `outrider.services`): its config section, filter, process."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outrider.config.errors import Problem
from outrider.config.extensions import Section
from outrider.config.model import GatewayConfig
from outrider.plugins import CliCommand, ServicePlugin
from outrider.process import ManagedProcess, http_ready
from ratelimit_service.config import (
    SERVICE,
    RateLimitsConfig,
    RateLimitServiceSettings,
    check_rate_limits,
    rate_limits_of,
    settings_of,
)
from ratelimit_service.envoy import RateLimitContribution

TYPE_URL = "type.googleapis.com/outrider.config.v1.RateLimitServiceConfig"


@dataclass(frozen=True)
class RateLimitPlugin:
    name: str = SERVICE
    type_url: str = TYPE_URL
    # After ext_authz (its descriptors carry the caller's tier and id from ext_authz's metadata).
    filter_order: int = 200
    sections: Mapping[str, Section] = field(default_factory=lambda: {"rate_limits": Section(RateLimitsConfig)})
    route_fields: Mapping[str, Section] = field(default_factory=dict)
    settings: type[RateLimitServiceSettings] = RateLimitServiceSettings

    def check(self, config: GatewayConfig) -> list[Problem]:
        return list(check_rate_limits(config))

    def payload(self, config: GatewayConfig) -> Mapping[str, Any]:
        # ratelimit_service/resource.py builds it (written beside this in another branch; wired at merge).
        raise NotImplementedError("ratelimit payload")

    def contribution(self) -> RateLimitContribution:
        return RateLimitContribution()

    def processes(self, config: GatewayConfig, config_path: Path) -> Sequence[ManagedProcess]:
        if rate_limits_of(config) is None:
            return []
        settings = settings_of(config)
        return [ManagedProcess(
            "ratelimit", [sys.executable, "-m", "ratelimit_service", "--config", str(config_path)],
            ready=http_ready(f"http://{settings.address}:{settings.metrics_port}/metrics"))]

    def cli_commands(self) -> Sequence[CliCommand]:
        return []


PLUGIN: ServicePlugin = RateLimitPlugin()
