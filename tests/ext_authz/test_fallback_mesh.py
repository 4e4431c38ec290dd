"""The fallback rules (no context_extensions: someone else's Envoy) against issue 12's three fail-open classes.

Non-canonical paths are refused (not matched raw); a direct-response route is answered by the authorizer
(never public, never forwarded); a route's header conditions are evaluated (a conditioned public route does
not make its whole prefix public). Also: a public answer removes Authorization on the way to the upstream.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from envoy.service.auth.v3 import external_auth_pb2

from ext_authz.decision import Authorizer, CheckInput
from ext_authz.fallback import DirectAnswer, HeaderCondition, PathRule
from ext_authz.jwt_verifier import ProviderSettings, TokenVerifier
from ext_authz.rbac import Grant, RbacPolicy
from ext_authz.resource import FallbackRule, fallback_rules
from ext_authz.service import build_denied, build_ok
from ext_authz.token_cache import TokenCache

BLOCKED = DirectAnswer(404, '{"error":"not_found"}')
LIVE = DirectAnswer(200, '{"status":"live"}')


def rules() -> list[PathRule]:
    return [
        PathRule(None, "/health/live", None, None, answer=LIVE),
        PathRule("/api/v1/public/internal/", None, None, None, answer=BLOCKED),
        PathRule("/api/v1/public/", None, None, None),
        PathRule("/api/v1/preview/", None, None, None, headers=(HeaderCondition("x-preview", exact="1"),)),
        PathRule("/api/v1/preview/", None, None, "profile"),
        PathRule("/api/v1/legacy/", None, None, None, allow_parameters=True),
        PathRule("/api/v1/users/", None, None, "profile"),
    ]


@pytest.fixture
def authorizer(tmp_path: Path) -> Authorizer:
    verifier = TokenVerifier([ProviderSettings(name="t", issuer="https://t", audiences=("a",), algorithms=("RS256",),
                                               hs256_secret=None, leeway_s=0)])
    rbac = RbacPolicy({"user": [Grant("profile", frozenset({"read"}))]})
    return Authorizer(verifier, TokenCache(), rbac, rules())


def decide(authorizer: Authorizer, path: str, headers: dict[str, str] | None = None) -> tuple[bool, int, str]:
    d = authorizer.decide(CheckInput("GET", path, headers or {}, {}), time.time())
    return d.allowed, d.status, d.reason


@pytest.mark.parametrize("path", [
    "/api/v1/public/..%2Fusers%2Fprofile",     # Istio's default (BASE) leaves %2F encoded
    "/api/v1/public/../users/profile",          # a default Envoy (normalize_path off) passes `..` as is
    "/api/v1/public/%2e%2e/users/profile",
    "/api/v1/public/..%5cusers/profile",
    "/api/v1/public//../users/profile",
    "/api/v1/public/..;/users/profile",
    "/api/v1/public/x;jsessionid=1",            # `;` parameters on a route that does not allow them
])
def test_non_canonical_paths_are_refused_not_matched_raw(authorizer: Authorizer, path: str) -> None:
    assert decide(authorizer, path) == (False, 403, "invalid_path")


def test_parameters_pass_on_a_route_that_allows_them(authorizer: Authorizer) -> None:
    assert decide(authorizer, "/api/v1/legacy/a;jsessionid=1") == (True, 200, "public")
    assert decide(authorizer, "/api/v1/legacy/..;/users/x") == (False, 403, "invalid_path")


def test_a_direct_response_route_is_answered_never_public(authorizer: Authorizer) -> None:
    # Before: skipped, so the wider public prefix after it made the blocked path public.
    assert decide(authorizer, "/api/v1/public/internal/secrets") == (False, 404, "direct_response")
    assert decide(authorizer, "/api/v1/public/other") == (True, 200, "public")
    # /health/live: the route's own 200 and body, from the authorizer (never a 401, never the upstream).
    d = authorizer.decide(CheckInput("GET", "/health/live", {}, {}), time.time())
    response = build_denied(d, "r1")
    assert response.denied_response.status.code == 200
    assert response.denied_response.body == '{"status":"live"}'
    assert [(h.header.key, h.header.value) for h in response.denied_response.headers] == [
        ("content-type", "application/json")]


def test_header_conditions_are_evaluated(authorizer: Authorizer) -> None:
    # Before: the conditioned public route made all of /api/v1/preview/ public.
    assert decide(authorizer, "/api/v1/preview/x", {"x-preview": "1"}) == (True, 200, "public")
    assert decide(authorizer, "/api/v1/preview/x") == (False, 401, "token_missing")
    assert decide(authorizer, "/api/v1/preview/x", {"x-preview": "2"}) == (False, 401, "token_missing")


@pytest.mark.parametrize(("condition", "headers", "holds"), [
    (HeaderCondition("x", exact="1"), {"x": "1"}, True),
    (HeaderCondition("x", exact="1"), {"x": "1,1"}, False),   # sent twice: Envoy joins the values with ","
    (HeaderCondition("x", prefix="ab"), {"x": "abc"}, True),
    (HeaderCondition("x", regex=re.compile("a+")), {"x": "aab"}, False),  # full match, as RE2 in Envoy
    (HeaderCondition("x", present=True), {}, False),
    (HeaderCondition("x", present=True, invert=True), {}, True),
    (HeaderCondition("x", exact="1", invert=True), {}, True),  # absent: the test fails, so invert holds
])
def test_header_condition_semantics(condition: HeaderCondition, headers: dict[str, str], holds: bool) -> None:
    assert condition.holds(headers) is holds


def test_payload_rules_carry_conditions_direct_responses_and_parameters() -> None:
    parsed = [FallbackRule.model_validate(r) for r in [
        {"path": "/health/live", "direct_response": {"status": 200, "body": "{}"}},
        {"prefix": "/p/", "public": True, "headers": [{"name": "X-Preview", "exact": "1"}]},
        {"prefix": "/l/", "public": True, "allow_path_parameters": True},
    ]]
    built = fallback_rules(parsed)
    assert built[0].answer == DirectAnswer(200, "{}", "application/json")
    assert built[1].headers == (HeaderCondition("x-preview", exact="1"),)
    assert built[2].allow_parameters
    with pytest.raises(ValueError, match="exactly one of public"):
        FallbackRule.model_validate({"path": "/x", "public": True, "direct_response": {"status": 403}})


def test_a_public_answer_removes_authorization_and_identity_headers(authorizer: Authorizer) -> None:
    d = authorizer.decide(CheckInput("GET", "/api/v1/public/x", {"authorization": "Bearer abc"}, {}), time.time())
    ok: external_auth_pb2.CheckResponse = build_ok(d)
    assert "authorization" in ok.ok_response.headers_to_remove
    assert "x-user-id" in ok.ok_response.headers_to_remove
