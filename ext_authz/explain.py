"""Why ext_authz runs on a route, or does not (`outrider explain-route`)."""

from __future__ import annotations

from ext_authz.config import auth_of, rbac_of
from ext_authz.native import is_native
from outrider.config.model import GatewayConfig, RouteConfig


def explain(route: RouteConfig, config: GatewayConfig) -> list[str]:
    if route.direct_response is not None:
        return ["Envoy answers the route itself: nothing to check"]
    if route.resource is None:
        return ["public route: no token is checked; identity headers a client sent are removed by Envoy"]
    issuers = ", ".join(f"{p.name} ({p.issuer})" for p in auth_of(config).providers)
    roles = sorted(role for role, grants in rbac_of(config).roles.items()
                   if any(g.resource in ("*", route.resource) for g in grants))
    if is_native(route, config):
        return [f"enforcement: native — Envoy's jwt_authn verifies a JWT of {issuers}, its rbac filter checks "
                f"resource {route.resource} (roles: {', '.join(roles) or 'none'}): no ext_authz hop"]
    return [f"protected route (resource {route.resource}): a JWT of {issuers} must verify (Python: PyJWT)",
            f"RBAC on resource {route.resource}: roles with a grant: {', '.join(roles) or 'none'}",
            "sets the identity headers and the tier/user_id metadata the rate limit reads"]
