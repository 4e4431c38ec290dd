"""A mesh's rate limit domain and descriptors (rate_limits.mesh): Envoy Gateway's `ns/gateway/listener` domain
is a valid name, and its descriptors reach the tier plans, the per-IP and the endpoint limits."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from pydantic import ValidationError

from ratelimit_service.backends.memory import MemoryBackend
from ratelimit_service.config import RateLimitsConfig
from ratelimit_service.guard import GuardedBackend
from ratelimit_service.limits import compile_table
from ratelimit_service.mesh import MeshMaps
from ratelimit_service.service import RateLimitService, Settings

Response = rls_pb2.RateLimitResponse
EG_DOMAIN = "default/eg/http"   # Envoy Gateway: the IR listener name <namespace>/<gateway>/<listener>
ROUTE = "httproute/default/api/rule/0/match/0/*"


def section(**extra: Any) -> dict[str, Any]:
    return {
        "per_ip": {"requests_per_unit": 2, "unit": "minute", "algorithm": "fixed_window"},
        "tiers": {"free": [{"requests_per_unit": 3, "unit": "minute"}],
                  "premium": [{"requests_per_unit": 100, "unit": "minute"}]},
        "endpoints": [{"path": "/api/v1/search", "limit": {"requests_per_unit": 1, "unit": "minute"}}],
        "mesh": [{"domain": EG_DOMAIN, "descriptors": [
            # EG: one BackendTrafficPolicy rule per tier: x-user-tier Exact (headerValueMatch) and x-user-id
            # Distinct (requestHeaders); ext_authz set both headers before the ratelimit filter runs.
            {"match": {"rule-0-match-0": "rule-0-match-0"}, "tier": "free", "user": "rule-0-match-1"},
            {"match": {"rule-1-match-0": "*"}, "tier_from": "rule-1-match-0", "user": "rule-1-match-1"},
            {"match": {"rule-2-match-0": "*"}, "per_ip": "rule-2-match-0"},
            {"match": {"search": "search"}, "endpoint": "/api/v1/search"},
        ]}],
        **extra,
    }


def service(rl: RateLimitsConfig) -> RateLimitService:
    settings = Settings(compile_table(rl), mesh=MeshMaps(rl))
    return RateLimitService(settings, GuardedBackend(MemoryBackend(), 1.0), clock=lambda: 1_800_000_000.0)


def request(domain: str, *descriptors: tuple[tuple[str, str], ...]) -> rls_pb2.RateLimitRequest:
    out = rls_pb2.RateLimitRequest(domain=domain)
    for entries in descriptors:
        d = out.descriptors.add()
        for key, value in entries:
            d.entries.add(key=key, value=value)
    return out


def test_envoy_gateway_domain_is_a_valid_domain() -> None:
    assert RateLimitsConfig.model_validate({"domain": EG_DOMAIN}).domain == EG_DOMAIN
    with pytest.raises(ValidationError, match="domain"):
        RateLimitsConfig.model_validate({"domain": "/leading/slash"})


async def test_eg_descriptors_reach_the_tier_plan_per_user() -> None:
    svc = service(RateLimitsConfig.model_validate(section()))
    alice = ((ROUTE, ROUTE), ("rule-0-match-0", "rule-0-match-0"), ("rule-0-match-1", "alice"))
    codes = [(await svc.decide(request(EG_DOMAIN, alice))).overall_code for _ in range(4)]
    assert codes == [Response.OK] * 3 + [Response.OVER_LIMIT]  # the free plan: 3 a minute
    bob = ((ROUTE, ROUTE), ("rule-0-match-0", "rule-0-match-0"), ("rule-0-match-1", "bob"))
    assert (await svc.decide(request(EG_DOMAIN, bob))).overall_code == Response.OK  # per user
    # The same counters as our own Envoy's descriptors in our domain: one plan, wherever the request came in.
    ours = (("tier", "free"), ("user_id", "alice"))
    assert (await svc.decide(request("outrider", ours))).overall_code == Response.OVER_LIMIT


async def test_tier_from_an_entry_per_ip_and_endpoint() -> None:
    svc = service(RateLimitsConfig.model_validate(section()))
    premium = (("rule-1-match-0", "premium"), ("rule-1-match-1", "carol"))
    answers = [await svc.decide(request(EG_DOMAIN, premium)) for _ in range(4)]
    assert {a.overall_code for a in answers} == {Response.OK}
    assert answers[-1].statuses[0].current_limit.requests_per_unit == 100
    ip = (("rule-2-match-0", "10.0.0.7/32"),)  # masked_remote_address: the address with its mask length
    assert [(await svc.decide(request(EG_DOMAIN, ip))).overall_code for _ in range(3)] == \
        [Response.OK, Response.OK, Response.OVER_LIMIT]
    search = (("search", "search"),)
    assert [(await svc.decide(request(EG_DOMAIN, search))).overall_code for _ in range(2)] == \
        [Response.OK, Response.OVER_LIMIT]


async def test_unread_descriptors_are_not_limited_and_keep_their_status_slot() -> None:
    svc = service(RateLimitsConfig.model_validate(section()))
    answer = await svc.decide(request(EG_DOMAIN, ((ROUTE, ROUTE),), (("rule-0-match-0", "rule-0-match-0"),)))
    assert answer.overall_code == Response.OK and len(answer.statuses) == 2
    # An unmapped domain is decided as before: nothing configured there.
    assert (await svc.decide(request("other/gw/http", (("rule-0-match-0", "rule-0-match-0"),)))).overall_code \
        == Response.OK


@pytest.mark.parametrize(("change", "message"), [
    ({"tier": "gold"}, "no plan named 'gold'"),
    ({"tier": None, "per_ip": "k", "user": None, "endpoint": "/nope"}, "exactly one of"),
    ({"tier": None, "user": None, "endpoint": "/nope"}, "not a path or prefix"),
    ({"user": None}, "needs `user`"),
])
def test_bad_mesh_readings_are_refused_with_the_field(change: dict[str, Any], message: str) -> None:
    data = section()
    reading = data["mesh"][0]["descriptors"][0]
    reading.update(change)
    data["mesh"][0]["descriptors"][0] = {k: v for k, v in reading.items() if v is not None}
    with pytest.raises(ValidationError, match=message):
        RateLimitsConfig.model_validate(data)


def test_mesh_domain_must_differ_from_ours() -> None:
    data = section()
    data["mesh"][0]["domain"] = "outrider"
    with pytest.raises(ValidationError, match=r"not rate_limits\.domain"):
        RateLimitsConfig.model_validate(data)
