"""The service plugin interface and its discovery through Python entry points (group `outrider.services`).

The kernel and the control plane never import a service: each service package registers one plugin
object, the way pytest finds its plugins, and everything service-specific is asked of it — its config
sections (ConfigExtension), its Envoy filter, its processes for `outrider run`, its CLI commands, and
its share of a config version.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from outrider.config.extensions import ENTRY_POINT_GROUP, ConfigExtension, installed
from outrider.config.model import GatewayConfig
from outrider.envoy_contribution import FilterContribution
from outrider.process import ManagedProcess

__all__ = ["ENTRY_POINT_GROUP", "CliCommand", "ServicePlugin", "discover", "ordered_plugins", "plugin_named"]


@dataclass(frozen=True)
class CliCommand:
    """A subcommand of `outrider` that a service adds (e.g. ext_authz's `token`)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@runtime_checkable
class ServicePlugin(ConfigExtension, Protocol):
    """What one outrider service tells the kernel and the control plane about itself."""

    @property
    def type_url(self) -> str:
        """The type URL of the xDS resource that carries this service's share of a config version."""
        ...

    @property
    def filter_order(self) -> int:
        """Where its HTTP filter sits among the services' filters, lower first (CORS, the kernel's, is
        before all of them)."""
        ...

    def payload(self, config: GatewayConfig) -> Mapping[str, Any]:
        """This service's share of a validated config, as plain JSON values (deterministic).

        The control plane sends it inside the service's resource; standalone mode (`--config FILE`)
        builds the same payload from the file, so both modes go through one code path.
        """
        ...

    def payload_json(self, config: GatewayConfig) -> str:
        """canonical_json(payload(config)) — what the control plane sends for every version; a plugin may
        build it from pieces it keeps between versions (10,000 routes), byte-identical (tested)."""
        ...

    def contribution(self) -> FilterContribution:
        """Its Envoy compile step: HTTP filter, per-route config, route fields, clusters."""
        ...

    def processes(self, config: GatewayConfig, config_path: Path) -> Sequence[ManagedProcess]:
        """What `outrider run` starts for it (argv and readiness), none when the config does not use it."""
        ...

    def cli_commands(self) -> Sequence[CliCommand]:
        """Subcommands it adds to `outrider`."""
        ...

    # Optional hook, looked up with getattr (a plugin need not define it):
    #     def warnings(self, config: GatewayConfig) -> list[str]
    # settings that are valid but likely not what was meant; `outrider validate` prints them.
    #     def explain(self, route: RouteConfig, config: GatewayConfig) -> list[str]
    # why its filter runs on a route, or not; `outrider explain-route` prints it under the hop.
    #     service_spec_path: str   ("module:NAME" of its outrider.service_main.ServiceSpec)
    # lets `python -m outrider.combined` run it in one process with the other services.


@lru_cache(maxsize=1)
def discover() -> tuple[ServicePlugin, ...]:
    """Every installed service plugin, sorted by name (entry points: pip install -e . registers them)."""
    found = []
    for plugin in installed():
        if not isinstance(plugin, ServicePlugin):
            raise TypeError(f"{plugin!r} (entry point group {ENTRY_POINT_GROUP}) is not an outrider ServicePlugin")
        found.append(plugin)
    return tuple(sorted(found, key=lambda p: p.name))


def ordered_plugins() -> tuple[ServicePlugin, ...]:
    """The plugins in HTTP filter order (also the order `outrider run` starts them)."""
    return tuple(sorted(discover(), key=lambda p: (p.filter_order, p.name)))


def plugin_named(name: str) -> ServicePlugin:
    for plugin in discover():
        if plugin.name == name:
            return plugin
    raise LookupError(f"no outrider service plugin named {name!r} is installed")


def config_warnings(config: GatewayConfig, plugins: Iterable[object] | None = None) -> list[str]:
    """What the services (their optional `warnings(config)` hook) advise about a valid config."""
    found: list[str] = []
    for plugin in discover() if plugins is None else plugins:
        hook = getattr(plugin, "warnings", None)
        if hook is not None:
            found.extend(str(w) for w in hook(config))
    return found
