"""ext_proc's share of a gateway config: the payload of its xDS resource, and the plans built from one.

The payload keeps every section *as given* (only the fields the config sets): a route's section
overrides exactly the fields it sets of the global one, so "set to the default" and "not set" must
stay apart all the way to the service. Both modes build from it: the control plane sends it, and
standalone mode computes it from the file with the same `payload()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ext_proc.config import (
    CacheConfig,
    ExtProcService,
    RouteCacheConfig,
    RouteSettings,
    TransformationsConfig,
    ValidationConfig,
    cache_of,
    route_cache_of,
    route_settings,
    settings_of,
    transformations_of,
    validation_of,
)
from ext_proc.plan import RoutePlan, compile_route_plans, global_settings
from ext_proc.purge import PurgeSettings
from outrider.config.errors import format_loc
from outrider.config.model import GatewayConfig, RouteConfig, RouteMatch
from outrider.service_resource import PerItemJson, canonical_json, canonical_json_with_items
from outrider.xds_client import ConfigRejected

M = TypeVar("M", bound=BaseModel)


def _given(section: BaseModel | None) -> dict[str, Any] | None:
    return None if section is None else section.model_dump(mode="json", exclude_unset=True)


def _route_item(route: RouteConfig) -> dict[str, Any]:
    return {
        "name": route.name,
        "upstream": route.upstream is not None,
        # Only what decides which cache rules a route can serve (its path match).
        "match": route.match.model_dump(mode="json", include={"prefix", "path", "regex"}, exclude_none=True),
        "transformations": _given(transformations_of(route)),
        "cache": _given(route_cache_of(route)),
        "validation": _given(validation_of(route)),
    }


def _head(config: GatewayConfig) -> dict[str, Any]:
    return {
        "transformations": _given(transformations_of(config)),
        "cache": _given(cache_of(config)),
        "validation": _given(validation_of(config)),
        "logging": {"decisions": config.logging.decisions},
        "services": {"ext_proc": settings_of(config).model_dump(mode="json")},
    }


def payload(config: GatewayConfig) -> dict[str, Any]:
    """Everything ext_proc reads of a validated config, as plain JSON values (deterministic)."""
    return {**_head(config), "routes": [_route_item(route) for route in config.routes]}


class PayloadJson:
    """canonical_json(payload(config)), reusing the text of every route unchanged since the last call."""

    def __init__(self) -> None:
        self._routes = PerItemJson(_route_item)

    def __call__(self, config: GatewayConfig) -> str:
        return canonical_json_with_items(_head(config), "routes", self._routes(config.routes))


@dataclass(frozen=True)
class _Route:
    """A route as route_settings() reads it."""

    name: str
    match: RouteMatch
    direct_response: object | None
    transformations: TransformationsConfig | None
    cache: RouteCacheConfig | None
    validation: ValidationConfig | None


@dataclass(frozen=True)
class _Sections:
    """The global sections as route_settings() reads them."""

    transformations: TransformationsConfig | None
    cache: CacheConfig | None
    validation: ValidationConfig | None


@dataclass(frozen=True)
class ExtProcBuild:
    """One payload, compiled: what the service swaps in as a whole."""

    plans: dict[str, RoutePlan]
    # The cache backend's settings when some plan caches, else None (no backend at all).
    cache: CacheConfig | None
    decisions: bool
    failure_mode_allow: bool
    # The purge webhook's listener (services.ext_proc.admin_port), or None.
    purge: PurgeSettings | None = None


def _model(cls: type[M], value: Any, where: str) -> M:
    try:
        return cls.model_validate(value)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = format_loc((where, *(p for p in first["loc"] if not str(p).startswith("function-"))))
        raise ConfigRejected(f"{loc}: {first['msg'].removeprefix('Value error, ')}") from None


def _optional(cls: type[M], value: Any, where: str) -> M | None:
    return None if value is None else _model(cls, value, where)


class PlanMemo:
    """Each upstream route's plan of the last build, by the route's payload text under the same global sections.

    Validating and compiling a route costs ~0.3 ms; with 10,000 routes a new version took ~2 s of the event
    loop, though a change touches one route. A route whose text and global sections are unchanged reuses its
    plan (the plan is a pure function of both). Only the last build's routes are kept.
    """

    def __init__(self) -> None:
        self.head: str | None = None
        self.plans: dict[str, RoutePlan] = {}


def build(data: Mapping[str, Any], memo: PlanMemo | None = None) -> ExtProcBuild:
    """Validate a payload with ext_proc's config models and compile its plans; ConfigRejected says why not.

    With `memo`, routes unchanged since the memo's last build are not validated or compiled again; the memo
    is updated only when the whole build succeeds.
    """
    try:
        sections = _Sections(
            _optional(TransformationsConfig, data["transformations"], "transformations"),
            _optional(CacheConfig, data["cache"], "cache"),
            _optional(ValidationConfig, data["validation"], "validation"),
        )
        head = canonical_json({k: data[k] for k in ("transformations", "cache", "validation")})
        known = memo.plans if memo is not None and memo.head == head else {}
        names: list[str] = []
        routes: dict[str, RouteSettings] = {}
        reused: dict[str, RoutePlan] = {}  # by route name
        texts: dict[str, str] = {}  # route text → name, for the memo
        for index, item in enumerate(data["routes"]):
            names.append(str(item["name"]))
            text = canonical_json(item) if memo is not None else ""
            texts[text] = names[-1]
            if text in known:
                reused[names[-1]] = known[text]
                continue
            where = f"routes[{index}]"
            route = _Route(
                name=str(item["name"]),
                match=_model(RouteMatch, item["match"], f"{where}.match"),
                direct_response=None if item["upstream"] else True,
                transformations=_optional(TransformationsConfig, item["transformations"], f"{where}.transformations"),
                cache=_optional(RouteCacheConfig, item["cache"], f"{where}.cache"),
                validation=_optional(ValidationConfig, item["validation"], f"{where}.validation"),
            )
            if route.direct_response is None:
                routes[route.name] = route_settings(route, sections)
        decisions = bool(data["logging"]["decisions"])
        service = _model(ExtProcService, data["services"]["ext_proc"], "services.ext_proc")
    except (KeyError, TypeError) as exc:
        raise ConfigRejected(f"malformed ext_proc payload: {type(exc).__name__}: {exc}") from None
    if len(set(names)) != len(names):
        raise ConfigRejected("route names repeat")
    try:
        compiled = compile_route_plans(routes, global_settings(sections))
    except ValueError as exc:  # a rule the models accepted but the compilers cannot use
        raise ConfigRejected(f"cannot compile ext_proc plans: {exc}") from None
    plans = {**reused, **compiled}
    if memo is not None:
        memo.head = head
        memo.plans = {text: plans[name] for text, name in texts.items() if name in plans}
    caches = any(plan.cache is not None for plan in plans.values())
    purge = None if service.admin_port is None else PurgeSettings(
        service.admin_address, service.admin_port, service.purge_token_env, service.purge_token_file)
    return ExtProcBuild(plans, (sections.cache or CacheConfig()) if caches else None, decisions,
                        service.failure_mode_allow, purge)
