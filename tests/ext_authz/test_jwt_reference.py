"""JWT verdicts against Envoy's own verifier: jwt_authn and the jwt_verify_lib it uses, case by case.

For every case the verdict is the reference's or stricter, never looser. The sources cited are
envoyproxy/jwt_verify_lib (src/jwt.cc Jwt::parseFromString, src/verify.cc verifyJwtWithoutTimeChecking,
src/jwks.cc, src/struct_utils.cc, jwt_verify_lib/status.h), Envoy's jwt_authn filter
(source/extensions/filters/http/jwt_authn/jwks_cache.cc) and its check_audience.cc. Where we are
stricter the case says so.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from cryptography.x509.oid import NameOID

from ext_authz.config import JwtProviderConfig
from ext_authz.decision import Authorizer, CheckInput
from ext_authz.jwks import JwksError, parse_jwks
from ext_authz.jwks_sources import JwksFileSource
from ext_authz.jwt_verifier import AuthError, ProviderSettings, TokenVerifier, UnknownKeyError
from ext_authz.rbac import Grant, RbacPolicy
from ext_authz.resource import parse, payload, provider_settings
from ext_authz.service import build_denied, build_ok, encode_roles
from ext_authz.token_cache import TokenCache
from outrider.cli import main as cli_main
from tests.ext_authz.conftest import KeyRing, Signer, b64url, public_jwk
from tests.harness import KEYS_DIR, Stack, example_config_dict, with_free_ports, write_config

NOW = 1_700_000_000.0
ISS = "https://aud.example"  # provider with a configured audience
OPEN_ISS = "https://noaud.example"  # provider without audiences
AUD = "api"
DAY = 86_400.0
HS_SECRET = b"k" * 40


def claims(issuer: str = ISS, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": issuer, "aud": AUD, "sub": "alice", "iat": NOW - 10, "exp": NOW + 600,
                            "roles": ["user"]}
    for name, value in overrides.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


DROP = object()


def expect(verifier: TokenVerifier, token: str, reason: str | None, now: float = NOW) -> None:
    if reason is None:
        assert verifier.verify(token, now).user_id
        return
    with pytest.raises(AuthError) as info:
        verifier.verify(token, now)
    assert info.value.reason == reason, info.value


def certificate(private_key: Any, cn: str = "issuer") -> x509.Certificate:
    """A self-signed certificate for the key (Ed25519 signs without a separate hash)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(private_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650)))
    algorithm = None if isinstance(private_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(private_key, algorithm)


def cert_pem(private_key: Any) -> str:
    return certificate(private_key).public_bytes(Encoding.PEM).decode()


def public_pem(private_key: Any) -> str:
    return private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def p521() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP521R1())


@pytest.fixture
def verifier(keys: KeyRing) -> TokenVerifier:
    v = TokenVerifier([
        ProviderSettings("aud", ISS, (AUD,), ("RS256", "RS384", "ES256", "ES512", "EdDSA")),
        ProviderSettings("open", OPEN_ISS, (), ("RS256",)),
    ])
    jwks = parse_jwks({"keys": [public_jwk(keys.rsa, "rsa-1")]})
    v.set_keys("aud", jwks)
    v.set_keys("open", jwks)
    return v


# --- claim types: Jwt::parseFromString (src/jwt.cc) refuses them whatever the provider's settings -------

TYPE_CASES = [
    # (id, issuer, claim overrides, reason); reason None = accepted.
    # iat/nbf/exp: StructUtils::GetUInt64 -> OUT_OF_RANGE for < 0 (JwtPayloadParseError{Iat,Nbf,Exp}OutOfRange).
    ("iat-negative", ISS, {"iat": -1}, "bad_claim"),
    ("nbf-negative", ISS, {"nbf": -5}, "bad_claim"),
    ("exp-negative", ISS, {"exp": -1}, "bad_claim"),
    # Not a number (kNumberValue) -> WRONG_TYPE: JwtPayloadParseError{Iat,Nbf,Exp}NotInteger.
    ("iat-string", ISS, {"iat": str(int(NOW))}, "bad_claim"),
    ("nbf-string", ISS, {"nbf": "0"}, "bad_claim"),
    ("exp-string", ISS, {"exp": str(int(NOW + 60))}, "bad_claim"),
    ("exp-null", ISS, {"exp": None}, "bad_claim"),
    ("iat-bool", ISS, {"iat": True}, "bad_claim"),
    ("nbf-list", ISS, {"nbf": [1]}, "bad_claim"),
    # jwt_test.cc TestParsePayloadIatDecimalsDrop: a fraction is accepted (the reference truncates it).
    ("iat-fraction", ISS, {"iat": NOW - 10.5}, None),
    # >= 2^64: OUT_OF_RANGE in the reference (jwt_test.cc TestParsePayloadIatTooBig).
    ("exp-beyond-uint64", ISS, {"exp": 2.001e206}, "bad_claim"),
    # Stricter: a NumericDate after 9999-12-31 is no issuer's date (the reference would accept it below 2^64).
    ("exp-year-10000", ISS, {"exp": 253_402_300_800, "iat": DROP}, "bad_claim"),
    # Stricter: the reference accepts a token without exp unless require_expiration/max_lifetime is set.
    ("exp-missing", ISS, {"exp": DROP}, "missing_claim"),
    # jti: GetString WRONG_TYPE -> JwtPayloadParseErrorJtiNotString.
    ("jti-string", ISS, {"jti": "id-1"}, None),
    ("jti-int", ISS, {"jti": 5}, "bad_claim"),
    ("jti-list", ISS, {"jti": ["a"]}, "bad_claim"),
    ("jti-null", ISS, {"jti": None}, "bad_claim"),
    # aud: GetStringList, a string or a list of strings, else JwtPayloadParseErrorAudNotString -- also
    # when no audience is configured (CheckAudience only runs after parsing).
    ("aud-int-configured", ISS, {"aud": 5}, "bad_audience"),
    ("aud-int-unconfigured", OPEN_ISS, {"aud": 5}, "bad_audience"),
    ("aud-list-int-unconfigured", OPEN_ISS, {"aud": ["api", 5]}, "bad_audience"),
    ("aud-object-unconfigured", OPEN_ISS, {"aud": {"api": True}}, "bad_audience"),
    ("aud-null-unconfigured", OPEN_ISS, {"aud": None}, "bad_audience"),
    ("aud-bool-unconfigured", OPEN_ISS, {"aud": True}, "bad_audience"),
    ("aud-any-string-unconfigured", OPEN_ISS, {"aud": "anyone"}, None),
    ("aud-empty-list-unconfigured", OPEN_ISS, {"aud": []}, None),
    ("aud-missing-unconfigured", OPEN_ISS, {"aud": DROP}, None),
    # areAudiencesAllowed: configured audiences and no token audience in them -> JwtAudienceNotAllowed.
    ("aud-empty-list-configured", ISS, {"aud": []}, "bad_audience"),
    ("aud-missing-configured", ISS, {"aud": DROP}, "missing_claim"),
    ("aud-list-one-matches", ISS, {"aud": ["other", AUD]}, None),
    # Stricter: check_audience.cc sanitizeAudience drops an http(s):// prefix and a trailing `/`; we compare
    # exactly, so "https://api/" is not "api".
    ("aud-sanitised-form", ISS, {"aud": f"https://{AUD}/"}, "bad_audience"),
    # iss: GetString WRONG_TYPE -> JwtPayloadParseErrorIssNotString.
    ("iss-int", ISS, {"iss": 7}, "bad_issuer"),
    ("iss-list", ISS, {"iss": [ISS]}, "bad_issuer"),
    # Stricter: the reference falls back to a provider with an empty issuer; we have none and need iss.
    ("iss-missing", ISS, {"iss": DROP}, "missing_claim"),
    # sub: JwtPayloadParseErrorSubNotString; stricter: we need a non-empty sub (it is the user id).
    ("sub-int", ISS, {"sub": 1}, "bad_claim"),
    ("sub-missing", ISS, {"sub": DROP}, "missing_claim"),
    # Stricter: identity values become headers; a control character is refused, not forwarded.
    ("sub-crlf", ISS, {"sub": "alice\r\nx-user-roles: admin"}, "bad_claim"),
    ("role-nul", ISS, {"roles": ["user\x00admin"]}, "bad_claim"),
    ("role-del", ISS, {"roles": ["user\x7f"]}, "bad_claim"),
    ("tier-tab", ISS, {"tier": "gold\tplus"}, "bad_claim"),
    ("email-lf", ISS, {"email": "a@x.io\n"}, "bad_claim"),
    ("role-comma-is-a-claim-not-an-error", ISS, {"roles": ["a,admin"]}, None),
]


@pytest.mark.parametrize(("issuer", "overrides", "reason"), [c[1:] for c in TYPE_CASES],
                         ids=[c[0] for c in TYPE_CASES])
def test_claim_types_as_parse_from_string(verifier: TokenVerifier, keys: KeyRing, sign: Signer, issuer: str,
                                          overrides: dict[str, Any], reason: str | None) -> None:
    """Claim types: src/jwt.cc Jwt::parseFromString and src/struct_utils.cc GetUInt64/GetString/GetStringList."""
    expect(verifier, sign(claims(issuer, **overrides), keys.rsa, "RS256", kid="rsa-1"), reason)


def test_header_kid_must_be_a_string(verifier: TokenVerifier, keys: KeyRing, sign: Signer) -> None:
    """src/jwt.cc: a non-string kid is JwtHeaderBadKid (whatever the key set holds)."""
    _header, payload, signature = sign(claims(), keys.rsa, "RS256", kid="rsa-1").split(".")
    forged = b64url(json.dumps({"alg": "RS256", "kid": 1}).encode())
    expect(verifier, f"{forged}.{payload}.{signature}", "malformed")


# --- lifetime: jwt_authn's max_lifetime (jwks_cache.cc isLifetimeAllowed: exp - now < max, no skew) ---


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"iat": DROP, "exp": NOW + DAY - 1}, None),
    ({"iat": DROP, "exp": NOW + DAY}, "lifetime_too_long"),  # not < max_lifetime
    ({"iat": DROP, "exp": NOW + DAY + 20}, "lifetime_too_long"),  # the clock-skew leeway does not extend it
    ({"iat": NOW + 20, "exp": NOW + DAY + 10}, "lifetime_too_long"),  # exp - iat < max, but exp - now is not
    ({"iat": NOW - 2 * DAY, "exp": NOW + 60}, "lifetime_too_long"),  # stricter: exp - iat bounded too
    ({"iat": DROP, "exp": 32_503_680_000}, "lifetime_too_long"),  # year 3000: the reference parses it
], ids=["exp-now-just-below", "exp-now-equal", "no-skew", "iat-ahead", "old-iat", "year-3000"])
def test_max_lifetime_as_jwt_authn(verifier: TokenVerifier, keys: KeyRing, sign: Signer,
                                   overrides: dict[str, Any], reason: str | None) -> None:
    """Envoy jwt_authn JwksDataImpl::isLifetimeAllowed: allowed iff exp - now < max_lifetime (here 24 h)."""
    expect(verifier, sign(claims(**overrides), keys.rsa, "RS256", kid="rsa-1"), reason)


# --- key selection: src/verify.cc verifyJwtWithoutTimeChecking --------------------------------------------


def _verifier_with(jwks: dict[str, Any], algorithms: tuple[str, ...] = ("RS256", "RS384", "ES256", "ES512",
                                                                        "EdDSA")) -> TokenVerifier:
    v = TokenVerifier([ProviderSettings("p", ISS, (AUD,), algorithms)])
    v.set_keys("p", parse_jwks(jwks))
    return v


def test_kidless_keys_are_all_tried(keys: KeyRing, sign: Signer) -> None:
    """verify.cc: "If kid is not specified in JWT, try all JWK" -- every kid-less key of the set, not the first."""
    v = _verifier_with({"keys": [public_jwk(keys.rsa, None), public_jwk(keys.rsa2, None),
                                 public_jwk(keys.ec256, None), public_jwk(keys.ed25519, None)]})
    assert parse_jwks({"keys": [public_jwk(keys.rsa, None), public_jwk(keys.rsa2, None)]}).skipped == ()
    for key, alg in ((keys.rsa, "RS256"), (keys.rsa2, "RS256"), (keys.ec256, "ES256"), (keys.ed25519, "EdDSA")):
        expect(v, sign(claims(), key, alg), None)
    expect(v, sign(claims(), keys.attacker_rsa, "RS256"), "bad_signature")


def test_token_kid_against_keys_without_kid(keys: KeyRing, sign: Signer) -> None:
    """verify.cc: a JWK is skipped only when both kids are set and differ, so a key without kid is tried for
    a token naming any kid (the reference's rule, kept)."""
    v = _verifier_with({"keys": [public_jwk(keys.rsa, None)]})
    expect(v, sign(claims(), keys.rsa, "RS256", kid="whatever"), None)
    expect(v, sign(claims(), keys.attacker_rsa, "RS256", kid="whatever"), "bad_signature")


def test_kidless_token_against_keys_with_kid(keys: KeyRing, sign: Signer) -> None:
    """verify.cc: a token without kid tries keys with a kid too; an empty kid counts as none."""
    v = _verifier_with({"keys": [public_jwk(keys.rsa, "a"), public_jwk(keys.rsa2, "b")]})
    expect(v, sign(claims(), keys.rsa2, "RS256"), None)
    assert v.verify(sign(claims(), keys.rsa2, "RS256", kid=""), NOW).kid is None


def test_a_kid_skips_keys_of_other_kids(keys: KeyRing, sign: Signer) -> None:
    """verify.cc: with both kids set and different, the JWK is skipped; the other key's signature fails."""
    v = _verifier_with({"keys": [public_jwk(keys.rsa, "a"), public_jwk(keys.rsa2, "b")]})
    expect(v, sign(claims(), keys.rsa2, "RS256", kid="a"), "bad_signature")
    expect(v, sign(claims(), keys.rsa2, "RS256", kid="b"), None)


def test_every_key_under_one_kid_is_tried(keys: KeyRing, sign: Signer) -> None:
    """verify.cc tries every JWK whose kid matches; two keys under one kid are both kept (were: second dropped)."""
    v = _verifier_with({"keys": [public_jwk(keys.rsa, "same"), public_jwk(keys.rsa2, "same"),
                                 public_jwk(keys.ec256, "same")]})
    expect(v, sign(claims(), keys.rsa2, "RS256", kid="same"), None)
    expect(v, sign(claims(), keys.ec256, "ES256", kid="same"), None)


def test_unknown_kid_asks_for_a_refresh(keys: KeyRing, sign: Signer) -> None:
    """No key of that kid and none without kid: JwksKidAlgMismatch in the reference; here the key source is
    asked to refresh (the key may have rotated in), and the token is refused."""
    v = _verifier_with({"keys": [public_jwk(keys.rsa, "a")]})
    with pytest.raises(UnknownKeyError) as info:
        v.verify(sign(claims(), keys.rsa2, "RS256", kid="new"), NOW)
    assert info.value.provider == "p"


def test_a_key_declaring_another_alg_is_skipped(keys: KeyRing, sign: Signer) -> None:
    """verify.cc: "The same alg must be used" -- a JWK whose alg differs is skipped (JwksKidAlgMismatch)."""
    v = _verifier_with({"keys": [public_jwk(keys.rsa, "a", alg="RS384")]})
    expect(v, sign(claims(), keys.rsa, "RS256", kid="a"), "key_alg_mismatch")
    expect(v, sign(claims(), keys.rsa, "RS384", kid="a"), None)


def test_an_ec_key_verifies_only_its_curves_algorithm(keys: KeyRing, sign: Signer, p521: Any) -> None:
    """Stricter: verify.cc picks the hash from the token's alg for any EC key; we tie alg to curve
    (RFC 7518 §3.4), as jwks.cc does when a JWK names both (JwksECKeyAlgNotCompatibleWithCrv)."""
    v = _verifier_with({"keys": [public_jwk(p521, None)]})
    expect(v, sign(claims(), p521, "ES512"), None)
    _header, payload, signature = sign(claims(), p521, "ES512").split(".")
    relabelled = b64url(json.dumps({"alg": "ES256"}).encode())
    expect(v, f"{relabelled}.{payload}.{signature}", "unknown_kid")  # no ES256 key at all
    skipped = parse_jwks({"keys": [public_jwk(keys.rsa, "r"), public_jwk(p521, "bad", alg="ES256")]}).skipped
    assert len(skipped) == 1 and "'alg'='ES256'" in skipped[0]


def test_nonstandard_rsa_exponent_is_refused(keys: KeyRing) -> None:
    """jwks.cc createRsaFromJwk: an exponent other than 3 or 65537 is a parse error; the key is dropped."""
    odd = {**public_jwk(keys.rsa, "odd"), "e": b64url((65539).to_bytes(3, "big"))}
    with pytest.raises(JwksError, match="exponent 65539"):
        parse_jwks({"keys": [odd]})
    assert parse_jwks({"keys": [public_jwk(keys.rsa, "ok"), odd]}).skipped[0].startswith("keys[1]: RSA public")


# --- ES512 (P-521) ---------------------------------------------------------------------------------------


def test_es512_with_a_p521_jwk(sign: Signer, p521: Any) -> None:
    """jwt.cc isImplemented lists ES512; jwks.cc maps crv P-521 to NID_secp521r1 (66-byte coordinates)."""
    v = _verifier_with({"keys": [public_jwk(p521, "p521")]})
    expect(v, sign(claims(), p521, "ES512", kid="p521"), None)
    assert JwtProviderConfig.model_validate({"name": "p", "issuer": ISS, "algorithms": ["ES512"],
                                             "jwks_file": __file__}).algorithms == ["ES512"]


# --- PEM and X.509 keys -----------------------------------------------------------------------------------


def test_pem_public_keys_are_keys_without_kid(keys: KeyRing, sign: Signer, p521: Any) -> None:
    """jwks.cc Jwks::createFromPem (PEM_read_bio_PUBKEY): RSA, EC and Ed25519 public keys, no kid."""
    text = public_pem(keys.rsa) + public_pem(p521) + public_pem(keys.ed25519)
    key_set = parse_jwks(text)
    assert [k.kid for k in key_set.ordered] == [None, None, None]
    v = _verifier_with({"keys": [public_jwk(keys.rsa, "unused")]})
    v.set_keys("p", key_set)
    for key, alg in ((keys.rsa, "RS256"), (p521, "ES512"), (keys.ed25519, "EdDSA")):
        expect(v, sign(claims(), key, alg, kid="any"), None)


def test_pem_certificates_and_refusals(keys: KeyRing, sign: Signer) -> None:
    """A PEM CERTIFICATE block gives its key; a private key or a weak key is refused with the block named."""
    v = _verifier_with({"keys": [public_jwk(keys.rsa, "unused")]})
    v.set_keys("p", parse_jwks(cert_pem(keys.ec256).encode()))
    expect(v, sign(claims(), keys.ec256, "ES256"), None)
    private = keys.rsa.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    with pytest.raises(JwksError, match=r"PEM block 0 \(PRIVATE KEY\) is a private key"):
        parse_jwks(private)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(JwksError, match="1024 bits"):
        parse_jwks(public_pem(weak))


def test_kid_to_certificate_map(keys: KeyRing, sign: Signer) -> None:
    """jwks.cc shouldCheckX509/createFromX509: an object of kid -> PEM certificate (Google's x509 format),
    accepted by jwt_authn's local_jwks and remote_jwks alike; each kid names its certificate's key."""
    v = _verifier_with({"keys": [public_jwk(keys.rsa, "unused")]})
    v.set_keys("p", parse_jwks(json.dumps({"k1": cert_pem(keys.rsa), "k2": cert_pem(keys.rsa2)})))
    expect(v, sign(claims(), keys.rsa2, "RS256", kid="k2"), None)
    expect(v, sign(claims(), keys.rsa2, "RS256", kid="k1"), "bad_signature")
    with pytest.raises(UnknownKeyError):
        v.verify(sign(claims(), keys.rsa, "RS256", kid="k3"), NOW)


def _x5c(private_key: Any) -> list[str]:
    return [base64.b64encode(certificate(private_key).public_bytes(Encoding.DER)).decode()]


def test_jwk_x5c(keys: KeyRing, sign: Signer) -> None:
    """RFC 7517 §4.7: the first x5c certificate's key MUST match the JWK's; a mismatch drops the JWK (the
    reference ignores x5c); a JWK with x5c and no key members takes the certificate's key."""
    matching = public_jwk(keys.rsa, "m", x5c=_x5c(keys.rsa))
    mismatched = public_jwk(keys.rsa2, "x", x5c=_x5c(keys.attacker_rsa))
    cert_only = {"kty": "RSA", "kid": "c", "x5c": _x5c(keys.rsa2)}
    key_set = parse_jwks({"keys": [matching, mismatched, cert_only]})
    assert [k.kid for k in key_set.ordered] == ["m", "c"]
    assert "does not match" in key_set.skipped[0]
    v = _verifier_with({"keys": [public_jwk(keys.rsa, "unused")]})
    v.set_keys("p", key_set)
    expect(v, sign(claims(), keys.rsa, "RS256", kid="m"), None)
    expect(v, sign(claims(), keys.rsa2, "RS256", kid="c"), None)


@pytest.mark.parametrize(("entry", "message"), [
    (lambda k: {"kty": "RSA", "x5c": _x5c(k.ec256)}, "not of 'kty'='RSA'"),
    (lambda k: {"kty": "EC", "crv": "P-384", "x5c": _x5c(k.ec256)}, "'crv'='P-384'"),
    (lambda k: {"kty": "RSA", "x5c": "MIIB"}, "'x5c' is not a non-empty list"),
    (lambda k: {"kty": "RSA", "x5c": ["not base64!"]}, "'x5c'[0] is not base64"),
    (lambda k: {"kty": "RSA", "x5c": [base64.b64encode(b"junk").decode()]}, "not a DER X.509 certificate"),
], ids=["kty-mismatch", "crv-mismatch", "not-a-list", "not-base64", "not-a-certificate"])
def test_unusable_x5c_is_skipped_with_its_reason(keys: KeyRing, entry: Any, message: str) -> None:
    key_set = parse_jwks({"keys": [public_jwk(keys.rsa, "good"), entry(keys)]})
    assert [k.kid for k in key_set.ordered] == ["good"]
    assert key_set.skipped[0].startswith("keys[1]: ") and message in key_set.skipped[0], key_set.skipped


def test_a_pem_jwks_file(tmp_path: Path, keys: KeyRing) -> None:
    """A jwks_file holding PEM is read as PEM (the content decides, not the file name)."""
    path = tmp_path / "issuer.pem"
    path.write_text("Issuer signing key, rotated 2026-01\n" + public_pem(keys.ed25519))
    got = []
    assert JwksFileSource(path, got.append).load_now().ordered[0].kty == "OKP"
    assert len(got) == 1


# --- HS256 kid -------------------------------------------------------------------------------------------


def test_hs256_kid(sign: Signer) -> None:
    """verify.cc treats an oct key like any other: its kid must match a token's kid when both are set. With
    hs256_kid the secret has that kid; without, it is a key without kid, tried for any token kid."""
    named = TokenVerifier([ProviderSettings("hs", ISS, (AUD,), ("HS256",), hs256_secret=HS_SECRET,
                                            hs256_kid="hs-1")])
    expect(named, sign(claims(), HS_SECRET, "HS256", kid="hs-1"), None)
    expect(named, sign(claims(), HS_SECRET, "HS256"), None)
    with pytest.raises(AuthError) as info:
        named.verify(sign(claims(), HS_SECRET, "HS256", kid="hs-2"), NOW)
    assert info.value.reason == "unknown_kid" and not isinstance(info.value, UnknownKeyError)
    unnamed = TokenVerifier([ProviderSettings("hs", ISS, (AUD,), ("HS256",), hs256_secret=HS_SECRET)])
    expect(unnamed, sign(claims(), HS_SECRET, "HS256", kid="anything"), None)
    with pytest.raises(ValueError, match="hs256_kid"):
        JwtProviderConfig.model_validate({"name": "p", "issuer": ISS, "jwks_file": __file__, "hs256_kid": "x"})


# --- typ (RFC 7515 §4.1.9, RFC 8725 §3.11); the reference does not check it: off by default -----------------


@pytest.mark.parametrize(("typ", "reason"), [
    ("JWT", None), ("jwt", None), ("at+jwt", None), ("AT+JWT", None), ("application/at+jwt", None),
    ("Application/JWT", None), (DROP, "bad_typ"), ("JOSE", "bad_typ"), ("application/jose", "bad_typ"),
    (5, "bad_typ"), ("", "bad_typ"),
])
def test_required_typ(keys: KeyRing, sign: Signer, typ: Any, reason: str | None) -> None:
    """required_typ ["JWT", "at+jwt"]: case-insensitive, `application/` optional (RFC 7515 §4.1.9)."""
    v = TokenVerifier([ProviderSettings("p", ISS, (AUD,), ("RS256",), required_typ=("JWT", "at+jwt"))])
    v.set_keys("p", parse_jwks({"keys": [public_jwk(keys.rsa, "k")]}))
    headers = {} if typ is DROP else {"typ": typ}
    token = pyjwt.api_jws.encode(json.dumps(claims()).encode(), keys.rsa, "RS256", headers={"kid": "k", **headers})
    if typ is DROP:  # PyJWT adds typ JWT unless told not to
        token = pyjwt.api_jws.encode(json.dumps(claims()).encode(), keys.rsa, "RS256",
                                     headers={"kid": "k", "typ": None})
        assert "typ" not in json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    expect(v, token, reason)


def test_typ_is_unchecked_by_default(verifier: TokenVerifier, keys: KeyRing, sign: Signer) -> None:
    expect(verifier, sign(claims(), keys.rsa, "RS256", kid="rsa-1", typ="JOSE+whatever"), None)
    assert JwtProviderConfig.model_validate({"name": "p", "issuer": ISS, "jwks_file": __file__,
                                             "required_typ": "JWT"}).typ_values == ("JWT",)


# --- `outrider validate`: an empty audience list is a warning, not an error ---------------------------------


def test_empty_audiences_warn_in_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """jwt_authn (config.proto: "audiences: not specified, JWT aud field will not be checked") allows it;
    RFC 8725 §3.9 says check it: `outrider validate` passes and warns, naming the provider."""
    data = with_free_ports(example_config_dict())
    data["auth"]["providers"][0]["audiences"] = []
    path = write_config(data, tmp_path / "gateway.yaml")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["validate", str(path)])
    assert exit_info.value.code == 0
    out = capsys.readouterr()
    assert f"{path}: warning: auth.providers[0] (dev): audiences is empty" in out.err
    from outrider.config import load_config
    from outrider.plugins import config_warnings

    data["auth"]["providers"][0]["audiences"] = ["outrider"]
    assert not any("audiences" in w for w in config_warnings(load_config(write_config(data, path))))


# --- roles in the identity header ---------------------------------------------------------------------------


def test_roles_are_percent_encoded_in_the_header(keys: KeyRing, sign: Signer) -> None:
    """A role holding `,` cannot pass for two roles; `%`, space and non-ASCII are encoded too (RFC 3986 §2.1)."""
    roles = ["user", "a,admin", "x y", "é", "100%", "ops:read/write"]
    assert encode_roles(roles) == "user,a%2Cadmin,x%20y,%C3%A9,100%25,ops:read/write"
    assert [unquote(part) for part in encode_roles(roles).split(",")] == roles
    verifier = TokenVerifier([ProviderSettings("p", ISS, (AUD,), ("RS256",))])
    verifier.set_keys("p", parse_jwks({"keys": [public_jwk(keys.rsa, "k")]}))
    authorizer = Authorizer(verifier, TokenCache(), RbacPolicy({"user": [Grant("*", frozenset({"*"}))]}))
    token = sign(claims(roles=["user", "a,admin"]), keys.rsa, "RS256", kid="k")
    decision = authorizer.decide(CheckInput("GET", "/x", {"authorization": f"Bearer {token}"},
                                            {"resource": "r"}), NOW)
    response = build_ok(decision)
    headers = {h.header.key: h.header.value for h in response.ok_response.headers}
    assert headers["x-user-roles"] == "user,a%2Cadmin"
    assert response.dynamic_metadata["roles"] == "user,a%2Cadmin"
    # A control character in a role is a refused token, answered 401 invalid_token.
    bad = sign(claims(roles=["user\r\nx-admin: 1"]), keys.rsa, "RS256", kid="k")
    refused = authorizer.decide(CheckInput("GET", "/x", {"authorization": f"Bearer {bad}"}, {"resource": "r"}), NOW)
    assert (refused.status, refused.reason) == (401, "bad_claim")
    denied = build_denied(refused, "rid")
    assert {h.header.key: h.header.value for h in denied.denied_response.headers}["www-authenticate"] == (
        'Bearer error="invalid_token"')


# --- through a real Envoy: every bad token is 401 invalid_token, never a 5xx ---------------------------------


def _dev_token(**overrides: Any) -> str:
    provider = example_config_dict()["auth"]["providers"][0]
    jwks = json.loads((KEYS_DIR / "jwks.json").read_text())
    now = int(time.time())
    payload = {"iss": provider["issuer"], "aud": provider["audiences"][0], "sub": "alice", "roles": ["user"],
               "iat": now, "exp": now + 600}
    for name, value in overrides.items():
        if value is DROP:
            payload.pop(name, None)
        else:
            payload[name] = value
    return pyjwt.api_jws.encode(json.dumps(payload).encode(), (KEYS_DIR / "dev-private.pem").read_bytes(),
                                "RS256", headers={"kid": jwks["keys"][0]["kid"]})


BAD_THROUGH_ENVOY = {
    "iat-negative": {"iat": -1}, "nbf-string": {"nbf": "0"}, "exp-missing": {"exp": DROP},
    "exp-absurd": {"exp": 1e30}, "jti-int": {"jti": 1}, "aud-int": {"aud": 5}, "iss-int": {"iss": 1},
    "sub-crlf": {"sub": "a\r\nx-user-id: root"}, "sub-nul": {"sub": "a\x00b"}, "role-lf": {"roles": ["a\nb"]},
    "tier-del": {"tier": "x\x7f"},
}


def test_bad_tokens_through_envoy_are_401_never_5xx(stack: Stack) -> None:
    """Each bad token, validly signed with the example key, gets 401 `invalid_token` from the real gateway."""
    profile = "/api/v1/users/profile"
    with stack.client() as client:
        for name, overrides in BAD_THROUGH_ENVOY.items():
            response = client.get(profile, headers={"authorization": f"Bearer {_dev_token(**overrides)}"})
            assert response.status_code == 401, (name, response.status_code, response.text)
            assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"', name
        ok = client.get(profile, headers={"authorization": f"Bearer {_dev_token(roles=['user', 'a,admin', 'é'])}"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["headers"]["x-user-roles"] == "user,a%2Cadmin,%C3%A9"


def test_typ_and_hs256_kid_travel_in_the_payload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings reach the service: file -> payload JSON -> the service's ProviderSettings."""
    from outrider.config import load_config

    monkeypatch.setenv("OUTRIDER_TEST_HS", "h" * 40)
    data = with_free_ports(example_config_dict())
    provider = data["auth"]["providers"][0]
    provider.update(algorithms=["RS256", "HS256"], hs256_secret_env="OUTRIDER_TEST_HS", hs256_kid="hs-1",
                    required_typ=["JWT", "application/at+jwt"])
    sent = json.loads(json.dumps(payload(load_config(write_config(data, tmp_path / "gateway.yaml")))))
    settings = provider_settings(parse(sent).auth)[0]
    assert (settings.hs256_kid, settings.required_typ) == ("hs-1", ("jwt", "at+jwt"))
