"""Why ext_proc sees a route's messages, or none of them (`outrider explain-route`)."""

from __future__ import annotations

from ext_proc.config import route_phases, route_settings
from outrider.config.model import GatewayConfig, RouteConfig


def explain(route: RouteConfig, config: GatewayConfig) -> list[str]:
    if route.direct_response is not None:
        return ["Envoy answers the route itself: nothing to process"]
    why: list[str] = []
    route_phases(route_settings(route, config), why)
    return why or ["every edit on this route is one Envoy makes itself: ext_proc is disabled here"]
