"""Cross-reference rules of the gateway config: names unique, references resolve, ports distinct.

The kernel's rules are here; each service plugin checks its own sections (ConfigExtension.check).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from outrider.config.errors import Loc, Problem, format_loc
from outrider.config.extensions import extensions
from outrider.config.model import GatewayConfig
from outrider.config.traffic_semantic import traffic_problems


def check_references(config: GatewayConfig) -> list[Problem]:
    """Return (field path, reason) for every rule the parsed config breaks."""
    return [*_problems(config), *traffic_problems(config),
            *(problem for plugin in extensions() for problem in plugin.check(config))]


def _duplicates(names: list[str]) -> set[str]:
    return {name for name, count in Counter(names).items() if count > 1}


def _problems(config: GatewayConfig) -> Iterator[Problem]:
    named: list[tuple[str, Sequence[Any]]] = [("listeners", config.listeners), ("upstreams", config.upstreams),
                                              ("routes", config.routes)]
    for section, items in named:
        dupes = _duplicates([item.name for item in items])
        for index, item in enumerate(items):
            if item.name in dupes:
                yield (*section.split("."), index, "name"), f"duplicate name '{item.name}'"

    upstreams = {u.name for u in config.upstreams}
    for index, route in enumerate(config.routes):
        if route.upstream is not None and route.upstream not in upstreams:
            known = ", ".join(sorted(upstreams)) or "none"
            yield ("routes", index, "upstream"), f"unknown upstream '{route.upstream}' (defined: {known})"

    ports: list[tuple[Loc, str, int]] = [(("listeners", i, "port"), lis.address, lis.port)
                                         for i, lis in enumerate(config.listeners)]
    ports.append((("admin", "port"), config.admin.address, config.admin.port))
    for service_name in type(config.services).model_fields:
        service = getattr(config.services, service_name)
        if getattr(service, "enabled", True) is False:
            continue
        for field in ("port", "metrics_port", "admin_port"):
            if isinstance(getattr(service, field, None), int):
                ports.append((("services", service_name, field), service.address, getattr(service, field)))
    seen: dict[int, Loc] = {}
    for loc, _address, port in ports:
        if port in seen:
            yield loc, f"port {port} is already used by {format_loc(seen[port])}"
        seen.setdefault(port, loc)
