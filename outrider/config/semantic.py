"""Cross-reference rules of the gateway config: names unique, references resolve, ports distinct."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from ext_proc.config import check_ext_proc
from outrider.config.errors import Loc, format_loc
from outrider.config.model import GatewayConfig
from outrider.config.traffic_semantic import traffic_problems
from ratelimit_service.config import check_rate_limits


def check_references(config: GatewayConfig) -> list[tuple[Loc, str]]:
    """Return (field path, reason) for every rule the parsed config breaks."""
    return [*_problems(config), *check_rate_limits(config), *traffic_problems(config), *check_ext_proc(config)]


def _duplicates(names: list[str]) -> set[str]:
    return {name for name, count in Counter(names).items() if count > 1}


def _problems(config: GatewayConfig) -> Iterator[tuple[Loc, str]]:
    named: list[tuple[str, Sequence[Any]]] = [("listeners", config.listeners), ("upstreams", config.upstreams),
                                              ("routes", config.routes), ("auth.providers", config.auth.providers)]
    for section, items in named:
        dupes = _duplicates([item.name for item in items])
        for index, item in enumerate(items):
            if item.name in dupes:
                yield (*section.split("."), index, "name"), f"duplicate name '{item.name}'"

    upstreams = {u.name for u in config.upstreams}
    granted = {g.resource for grants in config.rbac.roles.values() for g in grants}
    for index, route in enumerate(config.routes):
        if route.upstream is not None and route.upstream not in upstreams:
            known = ", ".join(sorted(upstreams)) or "none"
            yield ("routes", index, "upstream"), f"unknown upstream '{route.upstream}' (defined: {known})"
        if route.resource is not None and route.resource not in granted and "*" not in granted:
            yield ("routes", index, "resource"), f"resource '{route.resource}' is granted to no role"
        if route.match.regex is not None:
            try:
                re.compile(route.match.regex)
            except re.error as exc:
                yield ("routes", index, "match", "regex"), f"invalid regular expression: {exc}"

    issuers = _duplicates([p.issuer for p in config.auth.providers])
    for index, provider in enumerate(config.auth.providers):
        if provider.issuer in issuers:
            yield ("auth", "providers", index, "issuer"), f"issuer '{provider.issuer}' is used by two providers"
        if provider.jwks_file is not None and not provider.jwks_file.is_file():
            yield ("auth", "providers", index, "jwks_file"), f"file not found: {provider.jwks_file}"
        if provider.hs256_secret_env and not os.environ.get(provider.hs256_secret_env):
            yield (("auth", "providers", index, "hs256_secret_env"),
                   f"environment variable {provider.hs256_secret_env} is not set or empty")
        elif provider.hs256_secret_env and len(os.environ[provider.hs256_secret_env].encode()) < 32:
            # RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
            yield (("auth", "providers", index, "hs256_secret_env"),
                   f"the secret in {provider.hs256_secret_env} is shorter than 32 bytes")

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
