"""The model a config is validated with: the kernel's models extended, once, by the installed plugins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, Field, create_model

from outrider.config.extensions import ConfigExtension, Section, extensions
from outrider.config.model import ROUTES_MIN_LENGTH, GatewayConfig, RouteConfig, ServicesConfig


class Models(NamedTuple):
    """Subclasses of the kernel's models: every loaded config is an instance of `gateway`."""

    gateway: type[GatewayConfig]
    route: type[RouteConfig]
    services: type[ServicesConfig]


def _field(spec: Section) -> Any:
    if spec.required:
        return spec.model, ...
    return spec.model | None, None


def _add(fields: dict[str, Any], owner: str, base: type[BaseModel], plugin: str,
         specs: Mapping[str, Section | type[BaseModel]]) -> None:
    for key, spec in specs.items():
        if key in base.model_fields or key in fields:
            raise ValueError(f"plugin {plugin!r} adds `{key}` to {owner}, which already has one")
        if isinstance(spec, Section):
            fields[key] = _field(spec)
        else:  # services.<name>: always present, with the model's defaults
            fields[key] = (spec, Field(default_factory=spec))


def build_models(plugins: Sequence[ConfigExtension]) -> Models:
    """Extend the kernel's models with each plugin's sections, route fields and settings.

    Unknown keys stay errors (the subclasses inherit extra="forbid"), and pydantic's errors keep their
    field paths, so the loader reports a plugin's field with file and line like a kernel one.
    """
    # (annotation, default) per field, as create_model takes them.
    route_fields: dict[str, Any] = {}
    service_fields: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for plugin in plugins:
        _add(route_fields, "routes", RouteConfig, plugin.name, plugin.route_fields)
        if plugin.settings is not None:
            _add(service_fields, "services", ServicesConfig, plugin.name, {plugin.name: plugin.settings})
        _add(sections, "the gateway config", GatewayConfig, plugin.name, plugin.sections)
    route = create_model("RouteConfig", __base__=RouteConfig, __module__=__name__, **route_fields)
    services = create_model("ServicesConfig", __base__=ServicesConfig, __module__=__name__, **service_fields)
    routes: Any = Annotated[list[route], Field(min_length=ROUTES_MIN_LENGTH)]  # type: ignore[valid-type]
    gateway = create_model(
        "GatewayConfig", __base__=GatewayConfig, __module__=__name__,
        routes=(routes, ...), services=(services, Field(default_factory=services)), **sections,
    )
    return Models(gateway, route, services)


@lru_cache(maxsize=1)
def models() -> Models:
    """Built on first use from the installed plugins (entry points), then shared."""
    return build_models(extensions())


def gateway_model() -> type[GatewayConfig]:
    return models().gateway


def route_model() -> type[RouteConfig]:
    return models().route


def config_from_data(data: Mapping[str, Any], base_dir: Path | None = None) -> GatewayConfig:
    """Validate a config given as plain data (fields only: cross-references are semantic.py's).

    Relative file paths resolve against base_dir when given. Raises pydantic.ValidationError.
    """
    context = {"base_dir": base_dir} if base_dir is not None else None
    return gateway_model().model_validate(data, context=context)
