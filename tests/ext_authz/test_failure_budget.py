"""Floods of bad tokens: the per-client budget of refusals (429 + Retry-After), the negative cache, and the
RFC 6750 answers (400 invalid_request for two credentials, 403 insufficient_scope)."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2

from ext_authz.decision import Authorizer, CheckInput, Decision
from ext_authz.failure_budget import FailureBudget, client_key
from ext_authz.jwks import parse_jwks
from ext_authz.jwt_verifier import Identity, ProviderSettings, TokenVerifier
from ext_authz.rbac import Grant, RbacPolicy
from ext_authz.service import build_denied, client_of
from ext_authz.token_cache import NegativeCache, TokenCache, token_digest
from tests.ext_authz.conftest import KeyRing, Signer, public_jwk

ISS = "https://issuer.test"
NOW = 1_800_000_000.0
RBAC = RbacPolicy({"user": [Grant("profile", frozenset({"read"}))]})


class CountingVerifier(TokenVerifier):
    """The real verifier, counting how many tokens reached it (each one a signature check)."""

    calls = 0

    def verify(self, token: str, now: float) -> Identity:
        self.calls += 1
        return super().verify(token, now)


@pytest.fixture
def verifier(keys: KeyRing) -> CountingVerifier:
    v = CountingVerifier([ProviderSettings("dev", ISS, ("api",), ("RS256",))])
    v.set_keys("dev", parse_jwks({"keys": [public_jwk(keys.rsa, "k1")]}))
    return v


def token(sign: Signer, keys: KeyRing, sub: str = "alice", key: Any = None, **claims: Any) -> str:
    payload = {"iss": ISS, "aud": "api", "sub": sub, "roles": ["user"], "exp": NOW + 600, **claims}
    return sign(payload, key or keys.rsa, "RS256", kid="k1")


def check(token_: str | None, client: str = "203.0.113.7", method: str = "GET") -> CheckInput:
    headers = {"authorization": f"Bearer {token_}"} if token_ else {}
    return CheckInput(method, "/x", headers, {"resource": "profile"}, "rid", client=client)


# --- the budget itself ---------------------------------------------------------------------------


def test_bucket_allows_burst_then_refills_at_rate() -> None:
    budget = FailureBudget(burst=3, per_second=0.5, max_clients=10)
    for _ in range(3):
        assert budget.retry_after("a", NOW) is None
        budget.record_failure("a", NOW)
    assert budget.retry_after("a", NOW) == pytest.approx(2.0)  # one token at 0.5/s
    assert budget.retry_after("a", NOW + 1.0) == pytest.approx(1.0)
    assert budget.retry_after("a", NOW + 2.0) is None
    assert budget.retry_after("b", NOW) is None  # clients are independent
    budget.record_failure("a", NOW + 2.0)
    assert budget.retry_after("a", NOW + 2.0) == pytest.approx(2.0)
    assert budget.retry_after("a", NOW - 100) == pytest.approx(2.0)  # a clock going back gives nothing back


def test_table_is_bounded_least_recently_failing_evicted() -> None:
    budget = FailureBudget(burst=1, per_second=0.001, max_clients=100)
    for i in range(10_000):
        budget.record_failure(f"c{i}", NOW)
    assert len(budget) == 100
    assert budget.retry_after("c9999", NOW) is not None
    assert budget.retry_after("c0", NOW) is None  # evicted: starts afresh


@pytest.mark.parametrize(("address", "key"), [
    ("203.0.113.7", "203.0.113.7"),
    (" 203.0.113.7 ", "203.0.113.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # the same /64: one client
    ("[2001:db8::1]:443", "2001:db8::/64"),
    ("::ffff:198.51.100.1", "198.51.100.1"),
    ("", "unknown"),
    ("not-an-ip", "not-an-ip"),
])
def test_client_key(address: str, key: str) -> None:
    assert client_key(address) == key


def test_client_is_envoys_external_address_else_the_peer() -> None:
    request = external_auth_pb2.CheckRequest()
    request.attributes.source.address.socket_address.address = "10.0.0.1"
    assert client_of(request) == "10.0.0.1"
    request.attributes.request.http.headers["x-envoy-external-address"] = "203.0.113.9"
    assert client_of(request) == "203.0.113.9"


# --- the negative cache ----------------------------------------------------------------------------


def test_negative_cache_ttl_bound_and_disable() -> None:
    cache = NegativeCache(max_entries=3, ttl_s=10)
    keys = [token_digest(f"t{i}") for i in range(5)]
    for key in keys:
        cache.put(key, "bad_signature", NOW)
    assert len(cache) == 3 and cache.get(keys[0], NOW) is None and cache.get(keys[4], NOW) == "bad_signature"
    assert cache.get(keys[4], NOW + 9.999) == "bad_signature"
    assert cache.get(keys[4], NOW + 10) is None
    off = NegativeCache(max_entries=0)
    off.put(keys[0], "x", NOW)
    assert len(off) == 0


# --- through the decision --------------------------------------------------------------------------


def test_flood_of_forged_tokens_gets_429_without_verifying(verifier: CountingVerifier, keys: KeyRing,
                                                           sign: Signer) -> None:
    authorizer = Authorizer(verifier, TokenCache(), RBAC, refused=NegativeCache(),
                            budget=FailureBudget(burst=5, per_second=1.0, max_clients=100))
    forged = [token(sign, keys, sub=f"u{i}", key=keys.attacker_rsa) for i in range(50)]
    decisions = [authorizer.decide(check(t), NOW) for t in forged]
    assert [d.status for d in decisions] == [401] * 5 + [429] * 45
    assert verifier.calls == 5  # past the budget nothing reaches the signature check
    assert decisions[-1].retry_after_s == pytest.approx(1.0) and decisions[-1].reason == "failure_budget"
    # Another client is not affected; the flooder may try again once a token has refilled.
    assert authorizer.decide(check(forged[0], client="198.51.100.1"), NOW).status == 401
    assert authorizer.decide(check(forged[1]), NOW + 1.0).status == 401


def test_budget_spares_cached_valid_tokens(verifier: CountingVerifier, keys: KeyRing, sign: Signer) -> None:
    authorizer = Authorizer(verifier, TokenCache(), RBAC, refused=NegativeCache(),
                            budget=FailureBudget(burst=2, per_second=0.01, max_clients=100))
    good = token(sign, keys)
    assert authorizer.decide(check(good), NOW).allowed
    for i in range(3):
        authorizer.decide(check(token(sign, keys, sub=f"x{i}", key=keys.attacker_rsa)), NOW)
    # Over budget: a token already verified still passes (no new verification needed); an unseen one,
    # valid or not, waits — nothing tells them apart without the signature check the budget withholds.
    assert authorizer.decide(check(good), NOW).allowed
    assert authorizer.decide(check(token(sign, keys, sub="bob")), NOW).status == 429


def test_replayed_bad_token_is_refused_from_the_negative_cache(verifier: CountingVerifier, keys: KeyRing,
                                                                sign: Signer) -> None:
    authorizer = Authorizer(verifier, TokenCache(), RBAC, refused=NegativeCache(ttl_s=60))
    forged = token(sign, keys, key=keys.attacker_rsa)
    reasons = [authorizer.decide(check(forged), NOW).reason for _ in range(100)]
    assert reasons == ["bad_signature"] * 100
    assert verifier.calls == 1
    authorizer.decide(check(forged), NOW + 60)  # past the TTL: checked again
    assert verifier.calls == 2


def test_refusals_time_may_undo_are_not_remembered(verifier: CountingVerifier, keys: KeyRing,
                                                   sign: Signer) -> None:
    authorizer = Authorizer(verifier, TokenCache(), RBAC, refused=NegativeCache())
    early = token(sign, keys, nbf=NOW + 40)  # valid from NOW + 10 on (30 s leeway), well within the cache TTL
    assert authorizer.decide(check(early), NOW).reason == "not_yet_valid"
    assert authorizer.decide(check(early), NOW + 10).allowed


def test_key_rotation_clears_the_negative_cache(verifier: CountingVerifier, keys: KeyRing, sign: Signer) -> None:
    refused = NegativeCache()
    authorizer = Authorizer(verifier, TokenCache(), RBAC, refused=refused)
    new_key_token = token(sign, keys, key=keys.rsa2)  # signed by a key the issuer has not published yet
    assert authorizer.decide(check(new_key_token), NOW).reason == "bad_signature"
    verifier.set_keys("dev", parse_jwks({"keys": [public_jwk(keys.rsa2, "k1")]}))
    authorizer.forget_tokens()  # what KeyManager does on every new key set
    assert len(refused) == 0
    assert authorizer.decide(check(new_key_token), NOW).allowed


def test_unknown_kid_costs_no_budget(verifier: CountingVerifier, keys: KeyRing, sign: Signer) -> None:
    # A kid we do not hold yet is the gateway's state (a rotation in progress), not the client's fault.
    budget = FailureBudget(burst=1, per_second=0.001, max_clients=10)
    authorizer = Authorizer(verifier, TokenCache(), RBAC, refused=NegativeCache(), budget=budget)
    rotated = sign({"iss": ISS, "aud": "api", "sub": "a", "exp": NOW + 60}, keys.rsa2, "RS256", kid="k2")
    assert [authorizer.decide(check(rotated), NOW).reason for _ in range(5)] == ["unknown_kid"] * 5
    assert budget.retry_after(client_key("203.0.113.7"), NOW) is None


# --- RFC 6750 answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Bearer a.b.c, Bearer d.e.f", "Bearer a.b.c,Bearer a.b.c", "Basic x, Bearer y",
                                   "Bearer abc,"])
def test_two_credentials_are_400_invalid_request(verifier: CountingVerifier, value: str) -> None:
    # Envoy joins repeated Authorization headers with a comma; RFC 6750 §3.1: a request that "repeats the
    # same parameter" or "uses more than one method for including an access token" is invalid_request, 400.
    authorizer = Authorizer(verifier, TokenCache(), RBAC)
    decision = authorizer.decide(CheckInput("GET", "/x", {"authorization": value}, {"resource": "profile"}), NOW)
    assert (decision.status, decision.reason) == (400, "invalid_request")
    assert verifier.calls == 0
    response = build_denied(decision, "rid")
    assert response.status.code == code_pb2.INVALID_ARGUMENT
    assert response.denied_response.status.code == 400
    headers = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert headers["www-authenticate"] == 'Bearer error="invalid_request"'
    assert '"error":"invalid_request"' in response.denied_response.body


def test_forbidden_carries_insufficient_scope(verifier: CountingVerifier, keys: KeyRing, sign: Signer) -> None:
    # RFC 6750 §3.1: insufficient_scope, "the request requires higher privileges than provided by the
    # access token", answered 403 with the error in WWW-Authenticate.
    authorizer = Authorizer(verifier, TokenCache(), RBAC)
    decision = authorizer.decide(check(token(sign, keys), method="DELETE"), NOW)
    assert (decision.status, decision.reason) == (403, "forbidden")
    headers = {h.header.key: h.header.value for h in build_denied(decision, "rid").denied_response.headers}
    assert headers["www-authenticate"] == 'Bearer error="insufficient_scope"'
    # A 403 that is not about the token (service not ready) names no token error.
    not_ready = build_denied(Decision(False, 403, "not_ready"), "rid").denied_response.headers
    assert "www-authenticate" not in {h.header.key for h in not_ready}


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (30.0, "30")])
def test_429_says_when_to_retry(wait: float, header: str) -> None:
    response = build_denied(Decision(False, 429, "failure_budget", token_sent=True, retry_after_s=wait), "rid")
    assert response.status.code == code_pb2.RESOURCE_EXHAUSTED
    denied = response.denied_response
    assert denied.status.code == 429
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert headers["retry-after"] == header
    assert "www-authenticate" not in headers
    assert '"error":"too_many_requests"' in denied.body


@pytest.mark.parametrize("request_id", ["rid", 'a"b\\c', "é\u2028x", ""])
def test_denied_body_is_the_json_it_always_was(request_id: str) -> None:
    # Denied responses are copied from prebuilt templates; the body must stay exactly this JSON.
    import json

    for decision, error in ((Decision(False, 401, "bad_signature", token_sent=True), "unauthorized"),
                            (Decision(False, 429, "failure_budget", retry_after_s=3.0), "too_many_requests")):
        body = build_denied(decision, request_id).denied_response.body
        assert body == json.dumps({"error": error, "request_id": request_id}, separators=(",", ":"))
        assert json.loads(body) == {"error": error, "request_id": request_id}
