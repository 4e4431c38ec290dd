"""The service plugin interface and its discovery through Python entry points (group `outrider.services`).

The kernel and the control plane never import a service: each service package registers one plugin
object, the way pytest finds its plugins, and everything service-specific is asked of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from outrider.config.model import GatewayConfig

ENTRY_POINT_GROUP = "outrider.services"


@runtime_checkable
class ServicePlugin(Protocol):
    """What one outrider service tells the kernel and the control plane about itself."""

    # The service's name: its section under `services:` and the suffix of its xDS node id.
    name: str
    # The type URL of the xDS resource that carries this service's share of a config version.
    type_url: str

    def payload(self, config: GatewayConfig) -> Mapping[str, Any]:
        """This service's share of a validated config, as plain JSON values (deterministic).

        The control plane sends it inside the service's resource; standalone mode (`--config FILE`)
        builds the same payload from the file, so both modes go through one code path.
        """
        ...

    # Optional hook, looked up with getattr (a plugin need not define it):
    #     def warnings(self, config: GatewayConfig) -> list[str]
    # settings that are valid but likely not what was meant; `outrider validate` prints them.


@lru_cache(maxsize=1)
def discover() -> tuple[ServicePlugin, ...]:
    """Every installed service plugin, sorted by name (entry points: pip install -e . registers them)."""
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        plugin = ep.load()
        if not isinstance(plugin, ServicePlugin):
            raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not an outrider ServicePlugin")
        found.append(plugin)
    return tuple(sorted(found, key=lambda p: p.name))


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
