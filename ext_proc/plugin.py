"""ext_proc's service plugin (entry point `outrider.services`): config sections, filter, process, payload."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ext_proc import resource
from ext_proc.config import (
    SERVICE,
    CacheConfig,
    ExtProcService,
    RouteCacheConfig,
    TransformationsConfig,
    ValidationConfig,
    check_ext_proc,
    settings_of,
)
from ext_proc.envoy import ExtProcContribution, ext_proc_enabled
from ext_proc.explain import explain as explain_route
from outrider.config.errors import Problem
from outrider.config.extensions import Section
from outrider.config.model import GatewayConfig, RouteConfig
from outrider.plugins import CliCommand, ServicePlugin
from outrider.process import ManagedProcess
from outrider.service_process import service_process
from outrider.service_resource import EXT_PROC_TYPE_URL


def _sections() -> dict[str, Section]:
    return {"transformations": Section(TransformationsConfig), "cache": Section(CacheConfig),
            "validation": Section(ValidationConfig)}


def _route_fields() -> dict[str, Section]:
    # A route's section overrides the fields it sets of the global one (ext_proc/config.py route_settings).
    return {"transformations": Section(TransformationsConfig), "cache": Section(RouteCacheConfig),
            "validation": Section(ValidationConfig)}


@dataclass(frozen=True)
class ExtProcPlugin:
    name: str = SERVICE
    type_url: str = EXT_PROC_TYPE_URL
    # Where its ServiceSpec is, for `python -m outrider.combined` (a name, not an import: app imports us).
    service_spec_path: str = "ext_proc.app:SPEC"
    # Last: it transforms what the authorizer and the rate limiter let through.
    filter_order: int = 300
    sections: Mapping[str, Section] = field(default_factory=_sections)
    route_fields: Mapping[str, Section] = field(default_factory=_route_fields)
    settings: type[ExtProcService] = ExtProcService
    # Reuses each unchanged route's JSON between versions (10,000 routes: see resource.PayloadJson).
    _payload_json: resource.PayloadJson = field(default_factory=resource.PayloadJson, repr=False, compare=False)

    def check(self, config: GatewayConfig) -> list[Problem]:
        return list(check_ext_proc(config))

    def payload(self, config: GatewayConfig) -> Mapping[str, Any]:
        return resource.payload(config)

    def payload_json(self, config: GatewayConfig) -> str:
        return self._payload_json(config)

    def explain(self, route: RouteConfig, config: GatewayConfig) -> list[str]:
        """Why its filter runs on `route`, or not (`outrider explain-route`)."""
        return explain_route(route, config)

    def contribution(self) -> ExtProcContribution:
        return ExtProcContribution()

    def processes(self, config: GatewayConfig, config_path: Path) -> Sequence[ManagedProcess]:
        if not ext_proc_enabled(config):
            return []  # no route needs it: no filter, no cluster, no process
        # With the control plane it is an ADS client of it (ready once it has applied a version).
        return [service_process(SERVICE, "ext_proc", settings_of(config), config, config_path,
                                from_control_plane=config.services.xds.enabled)]

    def cli_commands(self) -> Sequence[CliCommand]:
        return []


PLUGIN: ServicePlugin = ExtProcPlugin()
