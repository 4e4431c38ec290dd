"""Envoy JSON-form dicts → protobuf messages; the checks `outrider validate` runs on the compiled config."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any, TypeVar

from google.protobuf import descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)
_IMPORTED_PACKAGES: set[str] = set()
_KNOWN_TYPES: set[str] = set()


class CompileError(ValueError):
    """A compiled resource is not a valid Envoy message (unknown field, wrong type, dangling reference)."""


def _import_package_of(type_url: str) -> None:
    """Make an Any's message type known: import every *_pb2 module of its proto package.

    Proto file names cannot be derived from message names, but xds-protos lays packages out as folders.
    """
    full_name = type_url.rsplit("/", 1)[-1]
    package = full_name.rsplit(".", 1)[0]
    if package in _IMPORTED_PACKAGES:
        return
    _IMPORTED_PACKAGES.add(package)
    try:
        module = importlib.import_module(package)
    except ImportError:
        return
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")


def _type_urls(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "@type" and isinstance(item, str):
                yield item
            else:
                yield from _type_urls(item)
    elif isinstance(value, list):
        for item in value:
            yield from _type_urls(item)


def known_type(type_url: str) -> Descriptor | None:
    """The message descriptor an Any's type URL names (its proto package imported first), or None."""
    if type_url not in _KNOWN_TYPES:
        _import_package_of(type_url)
        _KNOWN_TYPES.add(type_url)
    try:
        found: Descriptor = descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
    except KeyError:
        return None
    return found


def to_proto(resource: dict[str, Any], message: type[M]) -> M:
    """Parse one resource dict into `message`; raises CompileError naming the problem."""
    for type_url in _type_urls(resource):
        if type_url not in _KNOWN_TYPES:
            _import_package_of(type_url)
            _KNOWN_TYPES.add(type_url)
    try:
        parsed: M = json_format.ParseDict(resource, message())
        return parsed
    except json_format.ParseError as exc:
        raise CompileError(str(exc)) from None


def cluster_references(value: Any) -> set[str]:
    """Every cluster a resource names: route targets, weighted clusters, gRPC services, health minimums."""
    found: set[str] = set()
    pending = [value]  # a loop, not recursion: run once per route of a 10,000-route config
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("cluster", "cluster_name") and isinstance(item, str):
                    found.add(item)
                elif key == "cluster_min_healthy_percentages" and isinstance(item, dict):
                    found.update(item)
                elif isinstance(item, (dict, list)):
                    pending.append(item)
        elif isinstance(value, list):
            pending.extend(value)
    return found


def check_bootstrap(bootstrap: dict[str, Any]) -> None:
    """The static bootstrap parses into a Bootstrap message and names only defined clusters."""
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    to_proto(bootstrap, bootstrap_pb2.Bootstrap)
    static = bootstrap.get("static_resources", {})
    defined = {c["name"] for c in static.get("clusters", [])}
    for listener in static.get("listeners", []):
        missing = cluster_references(listener) - defined
        if missing:
            raise CompileError(f"listener {listener['name']!r} names undefined clusters: {sorted(missing)}")
