"""The config side of the service plugins: the sections, route fields and settings each adds, and its checks.

Plugins are found through entry points (group `outrider.services`, as pytest finds its plugins); the
kernel never names one. Their sections are read back typed with `section` / `service_settings`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

from outrider.config.errors import Problem
from outrider.config.model import GatewayConfig

ENTRY_POINT_GROUP = "outrider.services"
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Section:
    """A top-level section or a route field a plugin adds: its model, and whether the config must give it.

    An optional one is None when absent (nothing configured: the service does nothing there).
    """

    model: type[BaseModel]
    required: bool = False


@runtime_checkable
class ConfigExtension(Protocol):
    """What a service plugin adds to the gateway config model, and the rules that span sections."""

    @property
    def name(self) -> str:
        """The service's name: its `services.<name>` settings key."""
        ...

    @property
    def sections(self) -> Mapping[str, Section]:
        """Top-level sections of the gateway config, by key."""
        ...

    @property
    def route_fields(self) -> Mapping[str, Section]:
        """Fields of each route, by key."""
        ...

    @property
    def settings(self) -> type[BaseModel] | None:
        """The `services.<name>` model (where the service listens); every field has a default."""
        ...

    def check(self, config: GatewayConfig) -> Iterable[Problem]:
        """Rules across sections of a parsed config: (field path, reason) for each one broken."""
        ...


@lru_cache(maxsize=1)
def installed() -> tuple[Any, ...]:
    """Every object registered in the entry point group, once, sorted by entry point name.

    Loaded on first use, never at import. The same entry point seen twice (two metadata copies of one
    project on the path) counts once; two different objects under one name are an error.
    """
    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        plugin = ep.load()
        if ep.name in found and found[ep.name] is not plugin:
            raise TypeError(f"two outrider service plugins are registered as {ep.name!r}")
        found[ep.name] = plugin
    return tuple(found[name] for name in sorted(found))


def extensions() -> tuple[ConfigExtension, ...]:
    """The installed plugins, as config extensions."""
    out = []
    for plugin in installed():
        if not isinstance(plugin, ConfigExtension):
            raise TypeError(f"{plugin!r} (entry point group {ENTRY_POINT_GROUP}) does not extend the config")
        out.append(plugin)
    return tuple(out)


def section(owner: object, name: str, model: type[M]) -> M | None:
    """A plugin's section (of the config, or a field of a route), typed; None when absent.

    `owner` is a loaded config or route, or any object with the same attribute (a service rebuilding
    one from its payload)."""
    value = getattr(owner, name, None)
    if value is None or isinstance(value, model):
        return value
    raise TypeError(f"`{name}` holds a {type(value).__name__}, not a {model.__name__}")


def required_section(owner: object, name: str, model: type[M]) -> M:
    """A section the plugin declares required: present in every config the loader accepted."""
    value = section(owner, name, model)
    if value is None:
        raise LookupError(f"the config has no `{name}` section (was it loaded with its plugin installed?)")
    return value


def service_settings(config: GatewayConfig, name: str, model: type[M]) -> M:
    """`services.<name>`, typed; its defaults when the config was built without the plugin's settings."""
    value = section(config.services, name, model)
    return value if value is not None else model()
