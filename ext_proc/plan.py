"""Compile the gateway config into one RoutePlan per route (and one for requests from unknown routes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ext_proc.cache import CachePolicy
from ext_proc.config import (
    Phases,
    RouteSettings,
    TransformationsConfig,
    native_headers,
    route_phases,
    route_settings,
)
from ext_proc.transforms import RequestTransformer, ResponseTransformer
from ext_proc.validation import RequestValidator
from outrider.config.model import GatewayConfig

DEFAULT_ROUTE = ""
# Responses are parsed only to be transformed: their nesting limit is generous, not a policy.
RESPONSE_MAX_DEPTH = 256


@dataclass(frozen=True)
class RoutePlan:
    """Everything ext_proc does on one route, compiled: no config is interpreted per request."""

    name: str
    phases: Phases
    request: RequestTransformer | None
    response: ResponseTransformer | None
    validator: RequestValidator | None
    cache: CachePolicy | None
    max_body_bytes: int
    oversize_reject: bool
    max_json_depth: int

    @property
    def inspects_request_json(self) -> bool:
        return bool((self.request is not None and self.request.field_rules) or
                    (self.validator is not None and self.validator.inspects_values))


def compile_plan(name: str, settings: RouteSettings, native: bool) -> RoutePlan:
    t = settings.transformations
    limits = t or TransformationsConfig()
    exclude = [n for n, _, _ in native_headers(t).response_add] if native else []
    request = RequestTransformer(t.request, native) if t is not None else None
    response = ResponseTransformer(t.response, native) if t is not None else None
    phases = route_phases(settings)
    if not native and phases.response_body:
        # Requests of routes we did not compile (an Envoy config of your own, a mesh's) come without the
        # content type forwarded with the body (ext_proc/envoy.py): their responses' headers stay a message.
        phases = replace(phases, response_headers=True)
    return RoutePlan(
        name=name,
        phases=phases,
        request=request if request is not None and (request.edits_headers or request.field_rules) else None,
        response=response if response is not None and (response.header_rules or response.edits_body
                                                         or response.all_header_rules) else None,
        validator=RequestValidator(settings.validation) if settings.validation is not None else None,
        cache=CachePolicy(settings.cache, exclude) if settings.cache is not None else None,
        max_body_bytes=limits.max_body_bytes,
        oversize_reject=limits.oversize_body == "reject",
        max_json_depth=settings.validation.max_json_depth if settings.validation is not None else 64,
    )


def compile_plans(config: GatewayConfig) -> dict[str, RoutePlan]:
    """Plans by route name, straight from a loaded config (the service itself goes through its payload:
    ext_proc/resource.py, which gives the same plans)."""
    return compile_route_plans(
        {route.name: route_settings(route, config) for route in config.routes if route.direct_response is None},
        global_settings(config))


def compile_route_plans(routes: Mapping[str, RouteSettings], default: RouteSettings) -> dict[str, RoutePlan]:
    """Plans by route name. Unknown routes (an Envoy config of your own) get the global sections,
    with every header edit done by ext_proc since no route config does it natively."""
    plans = {name: compile_plan(name, settings, native=True) for name, settings in routes.items()}
    plans[DEFAULT_ROUTE] = compile_plan(DEFAULT_ROUTE, default, native=False)
    return plans


def global_settings(sections: Any) -> RouteSettings:
    """The global transformations/cache/validation sections (of a config or a payload) as settings."""
    t, cache, validation = sections.transformations, sections.cache, sections.validation
    return RouteSettings(t if t is not None and t.enabled else None,
                         cache if cache is not None and cache.enabled and cache.rules else None,
                         validation if validation is not None and validation.enabled else None)
