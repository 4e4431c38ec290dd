"""TokenVerifier: accepted tokens give the right Identity; every attack gives AuthError with its reason."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ext_authz import jwt_verifier
from ext_authz.jwks import parse_jwks
from ext_authz.jwt_verifier import (
    AuthError,
    Identity,
    ProviderSettings,
    TokenVerifier,
    UnknownKeyError,
)
from tests.ext_authz.conftest import KeyRing, Signer, b64json, b64url, public_jwk, raw_token

NOW = 1_700_000_000.0
ISS = "https://issuer.example.com"
HS_ISS = "https://hs.example.com"
RSA_ONLY_ISS = "https://rsa-only.example.com"
AUD = "outrider-api"
SECRET = b"s" * 16 + b"e" * 16 + b"-hs256-test-secret"
LEEWAY = 30.0


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "user-1",
        "exp": NOW + 600,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "roles": ["user"],
        "tier": "pro",
        "email": "u@example.com",
    }
    for name, value in overrides.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


DROP = object()


@pytest.fixture
def verifier(keys: KeyRing) -> TokenVerifier:
    v = TokenVerifier(
        [
            ProviderSettings(
                name="main",
                issuer=ISS,
                audiences=(AUD,),
                algorithms=("RS256", "RS384", "PS256", "ES256", "ES384", "EdDSA"),
                leeway_s=LEEWAY,
            ),
            ProviderSettings(
                name="hs",
                issuer=HS_ISS,
                audiences=(),
                algorithms=("RS256", "HS256"),
                hs256_secret=SECRET,
            ),
            ProviderSettings(name="rsaonly", issuer=RSA_ONLY_ISS, audiences=(), algorithms=("RS256",)),
            ProviderSettings(name="empty", issuer="https://nokeys.example.com", audiences=(),
                             algorithms=("RS256",)),
        ]
    )
    v.set_keys(
        "main",
        parse_jwks(
            {
                "keys": [
                    public_jwk(keys.rsa, "rsa-1"),
                    public_jwk(keys.ec256, "ec-1"),
                    public_jwk(keys.ec384, "ec384-1"),
                    public_jwk(keys.ed25519, "ed-1"),
                    public_jwk(keys.rsa2, "rsa-rs384", alg="RS384"),
                ]
            }
        ),
    )
    rsa_only = parse_jwks({"keys": [public_jwk(keys.rsa, "rsa-1")]})
    v.set_keys("hs", rsa_only)
    v.set_keys("rsaonly", rsa_only)
    return v


def rsa_public_pem(keys: KeyRing) -> bytes:
    return keys.rsa.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def hmac_token(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """HS256 by hand: PyJWT (rightly) refuses to use a PEM as an HMAC secret."""
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def expect_reason(verifier: TokenVerifier, token: str, reason: str, now: float = NOW) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify(token, now)
    assert info.value.reason == reason, info.value
    return info.value


# --- accepted tokens -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "key_attr", "kid"),
    [
        ("RS256", "rsa", "rsa-1"),
        ("PS256", "rsa", "rsa-1"),
        ("RS384", "rsa2", "rsa-rs384"),
        ("ES256", "ec256", "ec-1"),
        ("ES384", "ec384", "ec384-1"),
        ("EdDSA", "ed25519", "ed-1"),
    ],
)
def test_valid_asymmetric_tokens_accepted(
    verifier: TokenVerifier, keys: KeyRing, sign: Signer, alg: str, key_attr: str, kid: str
) -> None:
    token = sign(claims(), getattr(keys, key_attr), alg, kid=kid)
    identity = verifier.verify(token, NOW)
    assert identity == Identity(
        user_id="user-1",
        email="u@example.com",
        roles=("user",),
        tier="pro",
        expires_at=NOW + 600,
        issuer=ISS,
        provider="main",
        kid=kid,
    )


def test_valid_hs256_with_configured_secret(verifier: TokenVerifier, sign: Signer) -> None:
    token = sign(claims(iss=HS_ISS, aud=DROP, roles="admin", tier=DROP, email=DROP), SECRET, "HS256")
    identity = verifier.verify(token, NOW)
    assert identity.provider == "hs"
    assert identity.roles == ("admin",)  # a single string is one role
    assert identity.tier == "free"  # default tier
    assert identity.email is None
    assert identity.kid is None


def test_no_kid_uses_the_only_key_for_the_alg(verifier: TokenVerifier, keys: KeyRing, sign: Signer) -> None:
    identity = verifier.verify(sign(claims(roles=DROP), keys.rsa, "RS256"), NOW)
    assert identity.roles == ()
    assert identity.kid is None


def test_audience_list_intersecting_is_accepted(verifier: TokenVerifier, keys: KeyRing, sign: Signer) -> None:
    token = sign(claims(aud=["other", AUD]), keys.rsa, "RS256", kid="rsa-1")
    assert verifier.verify(token, NOW).user_id == "user-1"


def test_ignored_untrusted_key_headers_do_not_break_valid_tokens(
    verifier: TokenVerifier, keys: KeyRing, sign: Signer
) -> None:
    token = sign(claims(), keys.rsa, "RS256", kid="rsa-1", jku="https://evil.example/jwks", x5u="https://e/x")
    assert verifier.verify(token, NOW).provider == "main"


# --- time claims at the leeway boundaries --------------------------------------------------------


@pytest.mark.parametrize(
    ("claim_overrides", "now", "reason"),
    [
        ({"exp": NOW}, NOW + LEEWAY, None),
        ({"exp": NOW}, NOW + LEEWAY + 1, "expired"),
        ({"exp": NOW}, NOW + LEEWAY + 0.001, "expired"),
        ({"nbf": NOW}, NOW - LEEWAY, None),
        ({"nbf": NOW}, NOW - LEEWAY - 1, "not_yet_valid"),
        ({"iat": NOW + LEEWAY}, NOW, None),
        ({"iat": NOW + LEEWAY + 1}, NOW, "issued_in_future"),
        ({"iat": NOW + 3600, "nbf": DROP}, NOW, "issued_in_future"),
    ],
    ids=["exp-at-leeway", "exp-leeway+1", "exp-leeway+1ms", "nbf-at-leeway", "nbf-leeway-1",
         "iat-at-leeway", "iat-leeway+1", "iat-hour-ahead"],
)
def test_time_claims_use_the_passed_now(
    verifier: TokenVerifier,
    keys: KeyRing,
    sign: Signer,
    claim_overrides: dict[str, Any],
    now: float,
    reason: str | None,
) -> None:
    # Defaults have nbf/iat in the past and exp far ahead, so only the overridden claim matters.
    base = claims(exp=NOW + 10_000, nbf=NOW - 10_000, iat=NOW - 10_000)
    for name, value in claim_overrides.items():
        if value is DROP:
            base.pop(name)
        else:
            base[name] = value
    token = sign(base, keys.rsa, "RS256", kid="rsa-1")
    if reason is None:
        assert verifier.verify(token, now).user_id == "user-1"
    else:
        expect_reason(verifier, token, reason, now)


DAY = 86_400.0


@pytest.mark.parametrize(
    ("claim_overrides", "reason"),
    [
        ({"iat": NOW - 10, "exp": NOW - 10 + DAY}, None),
        ({"iat": NOW - 10, "exp": NOW - 10 + DAY + 1}, "lifetime_too_long"),
        # Issued long ago with a long life: still refused although little of it is left.
        ({"iat": NOW - 30 * DAY, "exp": NOW + 60}, "lifetime_too_long"),
        # Without iat, Envoy's rule alone (jwt_authn isLifetimeAllowed): exp - now < max_lifetime, no skew.
        ({"iat": DROP, "exp": NOW + DAY - 1}, None),
        ({"iat": DROP, "exp": NOW + DAY}, "lifetime_too_long"),
        ({"iat": NOW - 10, "exp": NOW + 50 * 365 * DAY}, "lifetime_too_long"),
        # "An exp millions of years away" (issue 11): not a NumericDate any issuer writes.
        ({"iat": NOW - 10, "exp": NOW + 3e6 * 365 * DAY}, "bad_claim"),
        ({"iat": DROP, "exp": 1e300}, "bad_claim"),
        ({"iat": -5.0}, "bad_claim"),
        ({"nbf": -1}, "bad_claim"),
        ({"exp": -1}, "bad_claim"),
        ({"iat": 10**400}, "bad_claim"),
    ],
    ids=["lifetime-24h", "lifetime-24h+1s", "old-iat-long-life", "no-iat-24h-1s", "no-iat-24h",
         "fifty-years", "millions-of-years", "exp-1e300", "negative-iat", "negative-nbf", "negative-exp",
         "huge-int-iat"],
)
def test_token_lifetime_is_bounded(
    verifier: TokenVerifier, keys: KeyRing, sign: Signer, claim_overrides: dict[str, Any], reason: str | None
) -> None:
    # RFC 7519 §4.1.4/§4.1.6 define exp and iat as NumericDates; Envoy's jwt_authn bounds a provider's
    # token lifetime with `max_lifetime`; we bound exp - iat (exp - now without iat) by max_lifetime_s.
    token = sign(claims(**{"nbf": DROP, **claim_overrides}), keys.rsa, "RS256", kid="rsa-1")
    if reason is None:
        assert verifier.verify(token, NOW).user_id == "user-1"
    else:
        expect_reason(verifier, token, reason)


def test_max_lifetime_is_per_provider(keys: KeyRing, sign: Signer) -> None:
    hour = TokenVerifier([ProviderSettings("main", ISS, (AUD,), ("RS256",), max_lifetime_s=3600)])
    hour.set_keys("main", parse_jwks({"keys": [public_jwk(keys.rsa, "rsa-1")]}))
    assert hour.verify(sign(claims(iat=NOW - 1, exp=NOW + 3599), keys.rsa, "RS256", kid="rsa-1"), NOW)
    expect_reason(hour, sign(claims(iat=NOW, exp=NOW + 3601), keys.rsa, "RS256", kid="rsa-1"), "lifetime_too_long")


# --- attacks and malformed tokens: (id, builder, reason) -----------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[KeyRing, Signer], str]
    reason: str


def _signed(alg: str = "RS256", kid: str | None = "rsa-1", key: str = "rsa", **overrides: Any) -> Callable[
    [KeyRing, Signer], str
]:
    def build(keys: KeyRing, sign: Signer) -> str:
        return sign(claims(**overrides), getattr(keys, key), alg, kid=kid)

    return build


def _none_case(spelling: str, signature: bytes) -> Case:
    return Case(
        f"alg-{spelling}-sig{len(signature)}",
        lambda k, s: raw_token({"alg": spelling, "typ": "JWT"}, claims(), signature),
        "alg_not_allowed",
    )


def _pem_hmac(iss: str, kid: str | None) -> Callable[[KeyRing, Signer], str]:
    def build(keys: KeyRing, sign: Signer) -> str:
        header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
        if kid is not None:
            header["kid"] = kid
        return hmac_token(header, claims(iss=iss), rsa_public_pem(keys))

    return build


def _attacker_jwk(kid: str | None) -> Callable[[KeyRing, Signer], str]:
    def build(keys: KeyRing, sign: Signer) -> str:
        headers: dict[str, Any] = {"jwk": public_jwk(keys.attacker_rsa, kid)}
        return sign(claims(), keys.attacker_rsa, "RS256", kid=kid, **headers)

    return build


def _tampered(keys: KeyRing, sign: Signer) -> str:
    header, _payload, signature = sign(claims(), keys.rsa, "RS256", kid="rsa-1").split(".")
    return f"{header}.{b64json(claims(roles=['admin']))}.{signature}"


def _relabelled(signed_alg: str, claimed_alg: str) -> Callable[[KeyRing, Signer], str]:
    def build(keys: KeyRing, sign: Signer) -> str:
        _header, payload, signature = sign(claims(), keys.rsa, signed_alg, kid="rsa-1").split(".")
        return f"{b64json({'alg': claimed_alg, 'kid': 'rsa-1'})}.{payload}.{signature}"

    return build


def _raw(header: Any, payload: Any, signature: bytes = b"sig") -> Callable[[KeyRing, Signer], str]:
    return lambda k, s: raw_token(header, payload, signature)


def _text(token: str) -> Callable[[KeyRing, Signer], str]:
    return lambda k, s: token


RS = {"alg": "RS256", "kid": "rsa-1"}
NOT_UTF8 = b'{"sub": "\xff"}'
DUPLICATE_SUB = b'{"sub": "a", "sub": "admin"}'

CASES = [
    *[_none_case(sp, sig) for sp in ("none", "None", "NONE", "nOnE") for sig in (b"", b"x" * 32)],
    # Key confusion: the RSA public key PEM used as an HMAC secret.
    Case("hs256-pem-secret-rs256-only-provider", _pem_hmac(RSA_ONLY_ISS, None), "alg_not_allowed"),
    Case("hs256-pem-secret-main-provider-with-kid", _pem_hmac(ISS, "rsa-1"), "alg_not_allowed"),
    Case("hs256-pem-secret-provider-with-hs-secret", _pem_hmac(HS_ISS, None), "bad_signature"),
    Case("hs256-pem-secret-provider-with-hs-secret-kid", _pem_hmac(HS_ISS, "rsa-1"), "bad_signature"),
    Case("unknown-kid", _signed(kid="rotated-away"), "unknown_kid"),
    Case("provider-without-keys", _signed(iss="https://nokeys.example.com"), "unknown_kid"),
    # Issuer is compared exactly.
    Case("iss-prefix", _signed(iss=ISS[:-4]), "unknown_issuer"),
    Case("iss-suffix-extended", _signed(iss=ISS + ".evil.example"), "unknown_issuer"),
    Case("iss-trailing-slash", _signed(iss=ISS + "/"), "unknown_issuer"),
    Case("iss-different-case", _signed(iss=ISS.upper()), "unknown_issuer"),
    Case("iss-missing", _signed(iss=DROP), "missing_claim"),
    Case("iss-not-string", _signed(iss=["https://issuer.example.com"]), "bad_issuer"),
    # Audience.
    Case("aud-wrong", _signed(aud="someone-else"), "bad_audience"),
    Case("aud-list-wrong", _signed(aud=["a", "b"]), "bad_audience"),
    Case("aud-empty-list", _signed(aud=[]), "bad_audience"),
    Case("aud-int", _signed(aud=5), "bad_audience"),
    Case("aud-list-with-int", _signed(aud=[AUD, 5]), "bad_audience"),
    Case("aud-missing", _signed(aud=DROP), "missing_claim"),
    # exp / sub / roles / email / tier types.
    Case("exp-missing", _signed(exp=DROP), "missing_claim"),
    Case("exp-string", _signed(exp=str(int(NOW + 600))), "bad_claim"),
    Case("exp-bool", _signed(exp=True), "bad_claim"),
    Case("exp-huge-int", _signed(exp=10**400), "bad_claim"),
    Case("nbf-string", _signed(nbf="0"), "bad_claim"),
    Case("iat-bool", _signed(iat=False), "bad_claim"),
    Case("sub-missing", _signed(sub=DROP), "missing_claim"),
    Case("sub-int", _signed(sub=42), "bad_claim"),
    Case("sub-empty", _signed(sub=""), "bad_claim"),
    Case("roles-int", _signed(roles=7), "bad_claim"),
    Case("roles-list-of-int", _signed(roles=[1, 2]), "bad_claim"),
    Case("roles-object", _signed(roles={"admin": True}), "bad_claim"),
    Case("email-int", _signed(email=1), "bad_claim"),
    Case("tier-list", _signed(tier=["gold"]), "bad_claim"),
    # Malformed shapes.
    Case("empty", _text(""), "malformed"),
    Case("two-segments", _text(f"{b64json(RS)}.{b64json(claims())}"), "malformed"),
    Case("four-segments", _text(f"{b64json(RS)}.{b64json(claims())}.c2ln.c2ln"), "malformed"),
    Case("empty-header-segment", _text(f".{b64json(claims())}.c2ln"), "malformed"),
    Case("bad-base64-header", _text(f"!!!.{b64json(claims())}.c2ln"), "malformed"),
    Case("padded-base64", _text(f"{b64json(RS)}=.{b64json(claims())}.c2ln"), "malformed"),
    Case("bad-base64-signature", _text(f"{b64json(RS)}.{b64json(claims())}.c2l*"), "malformed"),
    Case("header-not-json", _text(f"{b64url(b'not json')}.{b64json(claims())}.c2ln"), "malformed"),
    Case("header-json-list", _raw(["RS256"], claims()), "malformed"),
    Case("header-json-string", _raw("RS256", claims()), "malformed"),
    Case("payload-json-list", _raw(RS, [claims()]), "malformed"),
    Case("payload-json-number", _raw(RS, 12), "malformed"),
    Case("payload-not-utf8", _text(f"{b64json(RS)}.{b64url(NOT_UTF8)}.c2ln"), "malformed"),
    Case("payload-nan-exp",
         _text(f"{b64json(RS)}.{b64url(json.dumps(claims(exp=float('nan'))).encode())}.c2ln"), "malformed"),
    Case("payload-duplicate-sub", _text(f"{b64json(RS)}.{b64url(DUPLICATE_SUB)}.c2ln"), "malformed"),
    Case("non-ascii-token", _text(f"{b64json(RS)}.{b64json(claims())}.sïg"), "malformed"),
    Case("alg-missing", _raw({"kid": "rsa-1"}, claims()), "malformed"),
    Case("alg-not-string", _raw({"alg": ["RS256"]}, claims()), "malformed"),
    Case("kid-not-string", _raw({"alg": "RS256", "kid": 1}, claims()), "malformed"),
    # PyJWT would treat the payload as detached; without crit we refuse it before that matters.
    Case("b64-false-without-crit", _raw({**RS, "b64": False}, claims()), "malformed"),
    # Allow-list.
    Case("alg-not-in-provider-list", _signed(alg="RS512"), "alg_not_allowed"),
    Case("alg-hs512", _raw({"alg": "HS512"}, claims()), "alg_not_allowed"),
    Case("alg-unknown", _raw({"alg": "ES256K"}, claims()), "alg_not_allowed"),
    Case("alg-lowercase-rs256", _raw({"alg": "rs256", "kid": "rsa-1"}, claims()), "alg_not_allowed"),
    # crit: we understand no extensions.
    Case("crit-unknown", _raw({**RS, "crit": ["exp"], "exp": 1}, claims()), "crit_unsupported"),
    Case("crit-b64", _raw({**RS, "crit": ["b64"], "b64": False}, claims()), "crit_unsupported"),
    Case("crit-not-list", _raw({**RS, "crit": "exp"}, claims()), "malformed"),
    # Attacker-supplied keys in the header are never used.
    Case("jwk-header-attacker-key-our-kid", _attacker_jwk("rsa-1"), "bad_signature"),
    Case("jwk-header-attacker-key-no-kid", _attacker_jwk(None), "bad_signature"),
    Case("jwk-header-attacker-key-own-kid", _attacker_jwk("attacker"), "unknown_kid"),
    # Key type must fit the algorithm.
    Case("es256-against-rsa-kid", _signed(alg="ES256", key="ec256", kid="rsa-1"), "key_alg_mismatch"),
    Case("rs256-against-ec-kid", _signed(alg="RS256", key="rsa", kid="ec-1"), "key_alg_mismatch"),
    Case("es384-against-p256-kid", _signed(alg="ES384", key="ec384", kid="ec-1"), "key_alg_mismatch"),
    Case("eddsa-against-rsa-kid", _signed(alg="EdDSA", key="ed25519", kid="rsa-1"), "key_alg_mismatch"),
    Case("rs256-against-key-declaring-rs384", _signed(key="rsa2", kid="rsa-rs384"), "key_alg_mismatch"),
    # Signatures.
    Case("tampered-payload", _tampered, "bad_signature"),
    Case("signed-by-other-key-same-kid", _signed(key="rsa2", kid="rsa-1"), "bad_signature"),
    Case("ps256-signature-relabelled-rs256", _relabelled("PS256", "RS256"), "bad_signature"),
    Case("rs256-signature-relabelled-ps256", _relabelled("RS256", "PS256"), "bad_signature"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rejected_with_reason(verifier: TokenVerifier, keys: KeyRing, sign: Signer, case: Case) -> None:
    expect_reason(verifier, case.build(keys, sign), case.reason)


def test_unknown_kid_names_the_provider_for_refresh(
    verifier: TokenVerifier, keys: KeyRing, sign: Signer
) -> None:
    with pytest.raises(UnknownKeyError) as info:
        verifier.verify(sign(claims(), keys.rsa2, "RS256", kid="new-key"), NOW)
    assert info.value.provider == "main"
    assert info.value.reason == "unknown_kid"


def test_kidless_token_tries_every_key_that_fits(verifier: TokenVerifier, keys: KeyRing, sign: Signer) -> None:
    # Two keys fit RS384 (rsa-1 and rsa-rs384): the second one signed it (jwt_verify_lib tries every key).
    assert verifier.verify(sign(claims(), keys.rsa2, "RS384"), NOW).kid is None


def test_rotation_via_set_keys(verifier: TokenVerifier, keys: KeyRing, sign: Signer) -> None:
    token = sign(claims(), keys.rsa2, "RS256", kid="rsa-2")
    expect_reason(verifier, token, "unknown_kid")
    verifier.set_keys("main", parse_jwks({"keys": [public_jwk(keys.rsa2, "rsa-2")]}))
    assert verifier.verify(token, NOW).kid == "rsa-2"
    expect_reason(verifier, sign(claims(), keys.rsa, "RS256", kid="rsa-1"), "unknown_kid")


# --- size cap -------------------------------------------------------------------------------------


def test_oversized_garbage_is_rejected_before_any_parsing(
    verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*_: Any) -> Any:
        raise AssertionError("parsed an oversized token")

    monkeypatch.setattr(jwt_verifier, "b64url_decode_strict", must_not_run)
    monkeypatch.setattr(jwt_verifier.json, "loads", must_not_run)
    expect_reason(verifier, "!" * 8193, "token_too_large")
    expect_reason(verifier, "é" * 4097, "token_too_large")  # 8194 bytes in 4097 characters


def test_oversized_valid_token_is_rejected(verifier: TokenVerifier, keys: KeyRing, sign: Signer) -> None:
    token = sign(claims(pad="x" * 9000), keys.rsa, "RS256", kid="rsa-1")
    expect_reason(verifier, token, "token_too_large")
    small = TokenVerifier([ProviderSettings("p", ISS, (), ("RS256",))], max_token_bytes=100)
    expect_reason(small, sign(claims(), keys.rsa, "RS256", kid="rsa-1"), "token_too_large")


def test_token_at_exact_limit_is_not_too_large(verifier: TokenVerifier, keys: KeyRing, sign: Signer) -> None:
    token = sign(claims(), keys.rsa, "RS256", kid="rsa-1")
    exact = TokenVerifier([ProviderSettings("main", ISS, (AUD,), ("RS256",))], max_token_bytes=len(token))
    exact.set_keys("main", parse_jwks({"keys": [public_jwk(keys.rsa, "rsa-1")]}))
    assert exact.verify(token, NOW).user_id == "user-1"


# --- nothing but AuthError escapes ----------------------------------------------------------------


def test_mutated_tokens_raise_only_auth_error(verifier: TokenVerifier, keys: KeyRing, sign: Signer) -> None:
    rng = random.Random(1234)
    valid = sign(claims(), keys.rsa, "RS256", kid="rsa-1")
    alphabet = "ABCxyz019-_.=+/ \x00é"
    outcomes: set[str] = set()
    for _ in range(400):
        chars = list(valid)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randrange(len(chars))
            if op < 0.4:
                chars[pos] = rng.choice(alphabet)
            elif op < 0.7:
                del chars[pos]
            else:
                chars.insert(pos, rng.choice(alphabet))
        mutated = "".join(chars)
        if mutated == valid:
            continue
        try:
            verifier.verify(mutated, NOW)
        except AuthError as exc:
            outcomes.add(exc.reason)
        # Any other exception type fails the test by propagating.
    assert {"malformed", "bad_signature"} <= outcomes


def test_non_string_token_is_malformed(verifier: TokenVerifier) -> None:
    expect_reason(verifier, b"abc.def.ghi", "malformed")  # type: ignore[arg-type]


# --- configuration errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algorithms": ("HS256",)}, "requires hs256_secret"),
        ({"algorithms": ("HS256",), "hs256_secret": b"short"}, "at least 32 bytes"),
        ({"algorithms": ("RS256", "none")}, "unsupported algorithms"),
        ({"algorithms": ("HS512",)}, "unsupported algorithms"),
        ({"algorithms": ()}, "must not be empty"),
        ({"issuer": ""}, "issuer must not be empty"),
        ({"leeway_s": -1.0}, "leeway_s"),
        ({"max_lifetime_s": 0.0}, "max_lifetime_s"),
        ({"max_lifetime_s": float("inf")}, "max_lifetime_s"),
        ({"audiences": ("",)}, "audiences"),
    ],
)
def test_provider_settings_validation(kwargs: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"name": "p", "issuer": ISS, "audiences": (), "algorithms": ("RS256",)}
    with pytest.raises(ValueError, match=message):
        ProviderSettings(**{**base, **kwargs})


def test_pem_as_hs256_secret_is_refused_at_configuration(keys: KeyRing) -> None:
    with pytest.raises(ValueError, match="hs256_secret"):
        ProviderSettings("p", ISS, (), ("HS256",), hs256_secret=rsa_public_pem(keys))


def test_duplicate_issuer_and_unknown_provider_are_refused() -> None:
    p = ProviderSettings("p", ISS, (), ("RS256",))
    with pytest.raises(ValueError, match="configured twice"):
        TokenVerifier([p, ProviderSettings("q", ISS, (), ("RS256",))])
    v = TokenVerifier([p])
    with pytest.raises(ValueError, match="unknown provider"):
        v.set_keys("nope", parse_jwks({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "A" * 43}]}))
