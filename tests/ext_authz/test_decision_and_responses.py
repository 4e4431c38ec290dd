"""The request decision (token → identity → RBAC) and the CheckResponses built from it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2

from ext_authz.decision import Authorizer, CheckInput, Decision, PathRule, bearer_token
from ext_authz.jwks import parse_jwks
from ext_authz.jwt_verifier import ProviderSettings, TokenVerifier
from ext_authz.rbac import Grant, RbacPolicy
from ext_authz.service import build_denied, build_ok
from ext_authz.token_cache import TokenCache
from tests.ext_authz.conftest import KeyRing, Signer, public_jwk

ISS = "https://issuer.test"
NOW = 1_800_000_000.0
SEED = RbacPolicy({
    "admin": [Grant("*", frozenset({"*"}))],
    "user": [Grant(r, frozenset({"read", "write"})) for r in ("profile", "messages", "files")],
    "guest": [Grant("public", frozenset({"read"}))],
})


@pytest.fixture
def authorizer(keys: KeyRing) -> tuple[Authorizer, list[str]]:
    verifier = TokenVerifier([ProviderSettings("dev", ISS, ("api",), ("RS256",))])
    verifier.set_keys("dev", parse_jwks({"keys": [public_jwk(keys.rsa, "k1")]}))
    refreshes: list[str] = []
    rules = [PathRule("/open/", None, None, None), PathRule("/users/", None, None, "profile")]
    return Authorizer(verifier, TokenCache(), SEED, rules, on_unknown_key=refreshes.append), refreshes


def token(sign: Signer, keys: KeyRing, roles: list[str], kid: str = "k1", **claims: Any) -> str:
    payload = {"iss": ISS, "aud": "api", "sub": "alice", "roles": roles, "exp": NOW + 60, **claims}
    return sign(payload, keys.rsa, "RS256", kid=kid)


def check(token_: str | None, method: str = "GET", path: str = "/x", **context: str) -> CheckInput:
    headers = {"authorization": f"Bearer {token_}"} if token_ else {}
    return CheckInput(method, path, headers, context, "rid-1")


@pytest.mark.parametrize(("header", "expected"), [
    ("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER  abc ", "abc"), ("Basic abc", None), ("", None),
    ("Bearer", ""),
])
def test_bearer_token(header: str, expected: str | None) -> None:
    assert bearer_token({"authorization": header} if header else {}) == expected


@pytest.mark.parametrize(("roles", "method", "resource", "status", "reason"), [
    (["user"], "GET", "profile", 200, "allowed"),
    (["user"], "POST", "messages", 200, "allowed"),
    (["user"], "DELETE", "files", 403, "forbidden"),
    (["user"], "GET", "admin", 403, "forbidden"),
    (["admin"], "DELETE", "admin", 200, "allowed"),
    (["guest"], "GET", "profile", 403, "forbidden"),
    (["user"], "OPTIONS", "profile", 403, "forbidden"),
])
def test_rbac_through_decide(authorizer: tuple[Authorizer, list[str]], sign: Signer, keys: KeyRing,
                             roles: list[str], method: str, resource: str, status: int, reason: str) -> None:
    decision = authorizer[0].decide(check(token(sign, keys, roles), method, resource=resource), NOW)
    assert (decision.status, decision.reason) == (status, reason)


def test_missing_and_bad_tokens(authorizer: tuple[Authorizer, list[str]]) -> None:
    auth = authorizer[0]
    missing = auth.decide(check(None, resource="profile"), NOW)
    assert (missing.status, missing.reason, missing.token_sent) == (401, "token_missing", False)
    bad = auth.decide(check("a.b.c", resource="profile"), NOW)
    assert (bad.status, bad.token_sent) == (401, True)


def test_unknown_kid_asks_for_refresh(authorizer: tuple[Authorizer, list[str]], sign: Signer,
                                      keys: KeyRing) -> None:
    auth, refreshes = authorizer
    decision = auth.decide(check(token(sign, keys, ["user"], kid="new"), resource="profile"), NOW)
    assert (decision.status, decision.reason) == (401, "unknown_kid")
    assert refreshes == ["dev"]


def test_cached_identity_expires_with_token(authorizer: tuple[Authorizer, list[str]], sign: Signer,
                                            keys: KeyRing) -> None:
    auth = authorizer[0]
    tok = token(sign, keys, ["user"], exp=NOW + 5)
    assert auth.decide(check(tok, resource="profile"), NOW).allowed
    assert not auth.decide(check(tok, resource="profile"), NOW + 100).allowed


def test_fallback_rules_and_public_context(authorizer: tuple[Authorizer, list[str]], sign: Signer,
                                           keys: KeyRing) -> None:
    auth = authorizer[0]
    assert auth.decide(check(None, path="/open/x"), NOW).public
    assert auth.decide(check(None, public="true"), NOW).public
    assert auth.decide(check(token(sign, keys, ["user"]), path="/users/me?x=1"), NOW).allowed
    # No policy at all: deny, never guess.
    unknown = auth.decide(check(token(sign, keys, ["admin"]), path="/elsewhere"), NOW)
    assert (unknown.status, unknown.reason) == (403, "no_policy")


def test_ok_response_overwrites_identity(authorizer: tuple[Authorizer, list[str]], sign: Signer,
                                         keys: KeyRing) -> None:
    decision = authorizer[0].decide(check(token(sign, keys, ["user", "x"], tier="premium"), resource="files"), NOW)
    response = build_ok(decision)
    assert response.status.code == code_pb2.OK
    headers = {h.header.key: h for h in response.ok_response.headers}
    assert headers["x-user-id"].header.value == "alice"
    assert headers["x-user-roles"].header.value == "user,x"
    assert headers["x-user-tier"].header.value == "premium"
    assert all(h.append_action == h.OVERWRITE_IF_EXISTS_OR_ADD for h in headers.values())
    assert list(response.ok_response.headers_to_remove) == ["x-user-email"]
    assert response.dynamic_metadata["tier"] == "premium"
    assert response.dynamic_metadata["user_id"] == "alice"


def test_denied_responses_reveal_nothing(authorizer: tuple[Authorizer, list[str]]) -> None:
    decision = authorizer[0].decide(check("a.b.c", resource="profile"), NOW)
    response = build_denied(decision, "rid-9")
    assert response.status.code == code_pb2.UNAUTHENTICATED
    denied = response.denied_response
    assert denied.status.code == 401
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert json.loads(denied.body) == {"error": "unauthorized", "request_id": "rid-9"}
    assert decision.reason not in denied.body


def test_check_response_roundtrips() -> None:
    # What we build must be a valid message Envoy can parse.
    response = external_auth_pb2.CheckResponse()
    response.ParseFromString(build_denied(Decision(False, 403, "forbidden"), "r").SerializeToString())
    assert response.denied_response.status.code == 403
