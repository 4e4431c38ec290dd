"""Why the rate limit service is asked on a route, and for which limits (`outrider explain-route`)."""

from __future__ import annotations

from outrider.config.model import GatewayConfig, RouteConfig
from ratelimit_service.config import rate_limits_of, route_covers, route_failure_mode
from ratelimit_service.local_limits import is_local


def verdict(route: RouteConfig, config: GatewayConfig) -> str | None:
    """The hop line when limits are counted in Envoy (enforcement: local); None: the kernel's own verdict."""
    rl = rate_limits_of(config)
    if not is_local(rl) or route.direct_response is not None:
        return None
    limited = [r for r in explain(route, config) if not r.startswith(("no limit", "counted per Envoy"))]
    if not limited:
        return "no hop (enforcement: local): no limit covers this route"
    return "no hop (counted in Envoy, local_ratelimit): " + "; ".join(r.split(":")[0] for r in limited)


def explain(route: RouteConfig, config: GatewayConfig) -> list[str]:
    rl = rate_limits_of(config)
    if rl is None:
        return ["no rate_limits section"]
    if route.direct_response is not None:
        return ["Envoy answers the route itself: not limited"]
    reasons = []
    if rl.per_ip is not None and (route.public or rl.per_ip.apply_to == "all"):
        reasons.append(f"per client address: {rl.per_ip.requests_per_unit}/{rl.per_ip.unit}"
                       + (f", burst {rl.per_ip.burst}" if rl.per_ip.burst else "")
                       + (", with the automatic ban" if rl.per_ip.ban is not None else ""))
    if route.resource is not None and (rl.tiers or rl.unknown_tier):
        reasons.append(f"per user by tier ({', '.join(rl.tiers)}): the tier and user id ext_authz found")
    reasons.extend(f"endpoint {e.value}: {e.limit.requests_per_unit}/{e.limit.unit} shared by every caller"
                   for e in rl.endpoints if route_covers(route, e))
    if reasons and is_local(rl):
        reasons.append("counted per Envoy instance (N replicas: N× the limit), in token buckets refilled "
                       "continuously rather than fixed windows")
    elif reasons:
        reasons.append(f"when undecidable (store down or slow): {route_failure_mode(route, rl)}")
    else:
        reasons.append("no limit covers this route")
    return reasons
