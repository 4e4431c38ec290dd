"""Fuzz target for the JWT parser and the request decision (hypothesis, bounded to a few seconds in `make test`).

Random and mutated tokens only ever end in the verifier's AuthError raised by one of its own checks (never
another exception, and never its catch-all for an exception it did not expect), and never verify. Tokens
validly signed over random claims verify only when the claims meet every rule (RFC 7519 §4.1, the
provider's max_lifetime_s). Random Authorization headers give 400, 401 or 429, never an exception.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ext_authz.decision import Authorizer, CheckInput
from ext_authz.failure_budget import FailureBudget
from ext_authz.jwks import parse_jwks
from ext_authz.jwt_verifier import AuthError, ProviderSettings, TokenVerifier
from ext_authz.rbac import Grant, RbacPolicy
from ext_authz.token_cache import NegativeCache, TokenCache
from tests.ext_authz.conftest import KeyRing, public_jwk

NOW = 1_700_000_000.0
ISS = "https://issuer.example.com"
AUD = "api"
LEEWAY = 30.0
MAX_LIFETIME = 86_400.0
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=True)


@pytest.fixture(scope="module")
def fuzz_keys() -> KeyRing:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    return KeyRing(rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
                   rsa2=rsa.generate_private_key(public_exponent=65537, key_size=2048),
                   attacker_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
                   ec256=ec.generate_private_key(ec.SECP256R1()), ec384=ec.generate_private_key(ec.SECP384R1()),
                   ed25519=ed25519.Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def verifier(fuzz_keys: KeyRing) -> TokenVerifier:
    v = TokenVerifier([ProviderSettings("main", ISS, (AUD,), ("RS256", "ES256", "EdDSA"), leeway_s=LEEWAY,
                                        max_lifetime_s=MAX_LIFETIME)], max_token_bytes=4096)
    v.set_keys("main", parse_jwks({"keys": [public_jwk(fuzz_keys.rsa, "rsa"), public_jwk(fuzz_keys.ec256, "ec"),
                                            public_jwk(fuzz_keys.ed25519, "ed")]}))
    return v


@pytest.fixture(scope="module")
def valid_token(fuzz_keys: KeyRing) -> str:
    claims = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": NOW - 10, "exp": NOW + 600, "roles": ["user"]}
    return jwt.encode(claims, fuzz_keys.rsa, algorithm="RS256", headers={"kid": "rsa"})


def refused(verifier: TokenVerifier, token: Any) -> AuthError:
    """The token is refused by a deliberate check: AuthError, and not the catch-all for the unexpected."""
    with pytest.raises(AuthError) as info:
        verifier.verify(token, NOW)
    assert not info.value.detail.startswith("unexpected"), info.value
    return info.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
segment_chars = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/. \x00é",
                        max_size=120)


@FUZZ
@given(token=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_random_text_is_refused(verifier: TokenVerifier, token: str) -> None:
    refused(verifier, token)


@FUZZ
@given(parts=st.lists(segment_chars, min_size=1, max_size=5))
def test_random_segments_are_refused(verifier: TokenVerifier, parts: list[str]) -> None:
    refused(verifier, ".".join(parts))


@FUZZ
@given(header=json_values, payload=json_values, signature=st.binary(max_size=300),
       alg=st.sampled_from(["RS256", "ES256", "EdDSA", "none", "HS256", "rs256", 5]),
       kid=st.sampled_from(["rsa", "ec", "ed", "other", None]))
def test_structured_tokens_with_random_signatures_are_refused(
        verifier: TokenVerifier, header: Any, payload: Any, signature: bytes, alg: Any, kid: str | None) -> None:
    if isinstance(header, dict):
        header = {**header, "alg": alg, **({"kid": kid} if kid is not None else {})}
    if isinstance(payload, dict):
        payload = {**payload, "iss": ISS, "sub": "x", "aud": AUD, "exp": NOW + 60}
    token = ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)])
    refused(verifier, token)


@FUZZ
@given(data=st.data())
def test_mutated_valid_tokens_are_refused(verifier: TokenVerifier, valid_token: str, data: st.DataObject) -> None:
    chars = list(valid_token)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(chars) - 1))
        action = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        char = data.draw(st.sampled_from("ABCxyz019-_.=+/ \x00é"))
        if action == "replace":
            chars[position] = char
        elif action == "delete":
            del chars[position]
        else:
            chars.insert(position, char)
    mutated = "".join(chars)
    assume(mutated != valid_token)
    refused(verifier, mutated)


plausible_dates = st.sampled_from([NOW, NOW - 10, NOW + 60, NOW - 3600, NOW + MAX_LIFETIME - 100])
odd_dates = st.integers(-10**20, 10**20) | st.floats() | st.sampled_from(
    [None, "1700000000", True, False, [], {}, -1, 0, NOW + LEEWAY + 1, NOW - LEEWAY - 1,
     NOW + MAX_LIFETIME + LEEWAY + 1, NOW + MAX_LIFETIME, 253_402_300_800, 1e300])


@FUZZ
@given(dates=st.fixed_dictionaries({"exp": plausible_dates, "iat": plausible_dates | st.none(),
                                    "nbf": plausible_dates | st.none()}),
       odd=st.sampled_from(["exp", "iat", "nbf"]), odd_value=odd_dates,
       extra=st.dictionaries(st.text(max_size=8), json_values, max_size=3))
def test_signed_random_claims_verify_only_when_every_rule_holds(
        verifier: TokenVerifier, fuzz_keys: KeyRing, dates: dict[str, Any], odd: str, odd_value: Any,
        extra: dict[str, Any]) -> None:
    # One time claim at a time takes an odd value, the others plausible ones: each rule gets its turn.
    dates[odd] = odd_value
    exp, iat, nbf = dates["exp"], dates["iat"], dates["nbf"]
    claims: dict[str, Any] = {**extra, "iss": ISS, "aud": AUD, "sub": "alice"}
    for name, value in dates.items():
        if value is not None:
            claims[name] = value
    try:
        body = json.dumps(claims, allow_nan=True).encode()
    except (OverflowError, ValueError):
        return
    token = jwt.api_jws.encode(body, fuzz_keys.ed25519, algorithm="EdDSA", headers={"kid": "ed"})
    try:
        identity = verifier.verify(token, NOW)
    except AuthError as exc:
        assert not exc.detail.startswith("unexpected"), exc
        return
    # Verified: then each time claim was a plausible NumericDate and every bound held.
    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 253_402_300_799

    assert number(exp) and exp + LEEWAY >= NOW
    assert nbf is None or (number(nbf) and nbf <= NOW + LEEWAY)
    # Envoy jwt_authn's max_lifetime rule (exp - now < max, no skew), and exp - iat bounded too.
    assert exp - NOW < MAX_LIFETIME
    assert iat is None or (number(iat) and iat <= NOW + LEEWAY and exp - iat <= MAX_LIFETIME)
    assert identity.user_id == "alice"


@FUZZ
@given(value=st.text(max_size=200), client=st.text(max_size=60))
def test_random_authorization_headers_never_raise(verifier: TokenVerifier, value: str, client: str) -> None:
    authorizer = Authorizer(verifier, TokenCache(), RbacPolicy({"user": [Grant("*", frozenset({"*"}))]}),
                            refused=NegativeCache(), budget=FailureBudget(2, 1.0, 100))
    for _ in range(4):  # past the budget too
        decision = authorizer.decide(CheckInput("GET", "/x", {"authorization": value}, {"resource": "r"},
                                                client=client), NOW)
        assert not decision.allowed
        assert decision.status in (400, 401, 429)
        assert (decision.status == 400) == ("," in value)  # a comma: two credentials (RFC 6750 §3.1)
