"""ext_authz/jwt_verifier.py parses and checks JWS itself; PyJWT (jwt.decode_complete / PyJWS) is the library.

bench/handwritten_bench.py measures ours at about 3× PyJWS._load for parsing and faster for a whole verify,
so ours stays; this test proves it gives PyJWT's results on the same tokens. Each token goes to
TokenVerifier.verify and to jwt.decode_complete with the same key, algorithms, issuer, audience and leeway
(PyJWT docs, "Usage Examples" / api_jwt.decode_complete; `require` exp, iss, sub). Where both accept, the
header and claims we parsed equal PyJWT's. Where PyJWT refuses, we refuse. Where only we refuse, the case is
listed as STRICTER with the reason; every such reason is deliberate and safe (a refusal, never an accept):
- padded base64url segments: RFC 7515 §2 defines base64url without '='; PyJWS (_decode_base64url_segment)
  accepts padding, so one token would have several spellings (defeats caching on the token text).
- duplicate JSON members: PyJWT's json.loads keeps the last; RFC 7515 §5.2 lets a parser refuse, and two
  parsers reading different values of one claim is claim smuggling.
- non-UTF-8 JSON (UTF-16, or UTF-8 with a BOM): json.loads(bytes) in PyJWT guesses UTF-16/32 and skips a
  BOM; RFC 7519 §7.2 says UTF-8, and RFC 8259 §8.1 forbids adding a BOM.
- exp as a numeric string ("1700000600"): PyJWT's _validate_exp runs int() on it; RFC 7519 §4.1.4 makes
  exp a NumericDate, a JSON number (as jwt_verify_lib, which refuses it).
- max lifetime: exp more than a day ahead (Envoy jwt_authn max_lifetime; PyJWT has no such bound).
- control characters in identity claims (they become upstream headers).
Not compared here: choosing the key by kid (PyJWT is handed one key) — tests/ext_authz/test_jwt_reference.py
covers that against jwt_verify_lib.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from jwt.algorithms import HMACAlgorithm, RSAAlgorithm

from ext_authz.jwks import parse_jwks
from ext_authz.jwt_verifier import AuthError, ProviderSettings, TokenVerifier, _decode_json_object
from tests.ext_authz.conftest import KeyRing, public_jwk

ISS, AUD, SECRET = "https://diff.example", "api", b"d" * 40
NOW = time.time()  # PyJWT reads the clock itself; tokens here live for minutes, so one reading serves


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": int(NOW) - 10, "exp": int(NOW) + 600,
                            "tier": "gold", "roles": ["user"], "email": "a@example.com"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


class Forge:
    """Builds tokens segment by segment and signs whatever signing input results (RS256 or HS256)."""

    def __init__(self, keys: KeyRing) -> None:
        self.rsa = keys.rsa

    def sign(self, signing_input: str, alg: str) -> str:
        if alg == "HS256":
            return b64(HMACAlgorithm(HMACAlgorithm.SHA256).sign(signing_input.encode(), SECRET))
        return b64(RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), self.rsa))

    def token(self, payload: Any = None, header: Any = None, alg: str = "RS256", *,
              raw_header: bytes | None = None, raw_payload: bytes | None = None,
              edit: Callable[[str, str], tuple[str, str]] | None = None) -> str:
        header = {"alg": alg, "typ": "JWT", "kid": "k1"} if header is None else header
        h = b64(raw_header if raw_header is not None else json.dumps(header).encode())
        p = b64(raw_payload if raw_payload is not None else json.dumps(claims() if payload is None else payload)
                .encode())
        if edit is not None:
            h, p = edit(h, p)
        signing_input = f"{h}.{p}"
        return f"{signing_input}.{self.sign(signing_input, alg if isinstance(alg, str) else 'RS256')}"


def pad(segment: str) -> str:
    return segment + "=" * (-len(segment) % 4)


def noncanonical(token: str) -> str:
    """The last signature character with its unused low bits set: decodes leniently to the same bytes."""
    head, sig = token.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = {2: 0b1111, 3: 0b11}[len(sig) % 4]  # bits the last character carries beyond the data
    last = alphabet.index(sig[-1])
    return f"{head}.{sig[:-1]}{alphabet[last | spare]}" if last | spare != last else token


SAME, STRICTER = "same", "stricter"
# name -> (token builder, expected relation)
CASES: dict[str, tuple[Callable[[Forge], str], str]] = {
    "valid RS256": (lambda f: f.token(), SAME),
    "valid HS256": (lambda f: f.token(alg="HS256", header={"alg": "HS256"}), SAME),
    "aud as a list": (lambda f: f.token(claims(aud=["other", AUD])), SAME),
    "whitespace and unicode in JSON": (lambda f: f.token(raw_payload=b' { "iss" : "%s", "aud":"api", "sub":"\\u00e9l"'
                                                           b', "exp": %d } ' % (ISS.encode(), NOW + 600)), SAME),
    "extra dot (4 segments)": (lambda f: f.token() + ".x", SAME),
    "two segments": (lambda f: f.token().rsplit(".", 1)[0], SAME),
    "empty signature": (lambda f: f.token().rsplit(".", 1)[0] + ".", SAME),
    "standard base64 alphabet (+ /)": (lambda f: f.token(edit=lambda h, p: (h, p.replace("-", "+").replace("_", "/")
                                                                          + "+/")), SAME),
    "segment length 1 mod 4": (lambda f: f.token(edit=lambda h, p: (h, p + "A")), SAME),
    "non-canonical last base64 character": (lambda f: noncanonical(f.token()), SAME),
    "bad base64 in header": (lambda f: f.token(edit=lambda h, p: ("*" + h, p)), SAME),
    "trailing newline": (lambda f: f.token() + "\n", SAME),
    "non-ASCII character": (lambda f: f.token() + "é", SAME),
    "header is a JSON list": (lambda f: f.token(header=["RS256"]), SAME),
    "payload is a JSON string": (lambda f: f.token(raw_payload=b'"x"'), SAME),
    "payload not JSON": (lambda f: f.token(raw_payload=b"{not json"), SAME),
    "payload invalid UTF-8": (lambda f: f.token(raw_payload=b'{"sub":"\xff"}'), SAME),
    "alg none": (lambda f: f.token(header={"alg": "none"}), SAME),
    "alg missing": (lambda f: f.token(header={"typ": "JWT"}), SAME),
    "alg HS256 with the RSA key's token": (lambda f: f.token(header={"alg": "HS256"}), SAME),
    "crit header": (lambda f: f.token(header={"alg": "RS256", "crit": ["exp"], "exp": 1}), SAME),
    "b64 false without crit": (lambda f: f.token(header={"alg": "RS256", "b64": False}), SAME),
    "tampered payload": (lambda f: f.token().replace(".", ".e", 1), SAME),
    "expired": (lambda f: f.token(claims(exp=int(NOW) - 100)), SAME),
    "expired within leeway": (lambda f: f.token(claims(exp=int(NOW) - 10)), SAME),
    "not yet valid": (lambda f: f.token(claims(nbf=int(NOW) + 100)), SAME),
    "issued in the future": (lambda f: f.token(claims(iat=int(NOW) + 100)), SAME),
    "exp NaN": (lambda f: f.token(raw_payload=json.dumps(claims()).replace(f'"exp": {int(NOW) + 600}', '"exp": NaN')
                                  .encode()), SAME),
    "wrong audience": (lambda f: f.token(claims(aud="other")), SAME),
    "no audience": (lambda f: f.token(claims(aud=None)), SAME),
    "wrong issuer": (lambda f: f.token(claims(iss="https://evil.example")), SAME),
    "no sub": (lambda f: f.token(claims(sub=None)), SAME),
    "sub a number": (lambda f: f.token(claims(sub=7)), SAME),
    "jti a number": (lambda f: f.token(claims(jti=7)), SAME),
    # Only we refuse (see the module docstring):
    "padded segments": (lambda f: f.token(edit=lambda h, p: (pad(h), pad(p))), STRICTER),
    "duplicate claim": (lambda f: f.token(raw_payload=json.dumps(claims())[:-1].encode() + b', "sub": "root"}'),
                        STRICTER),
    "payload with UTF-8 BOM": (lambda f: f.token(raw_payload=b"\xef\xbb\xbf" + json.dumps(claims()).encode()),
                               STRICTER),
    "exp a numeric string": (lambda f: f.token(claims(exp=str(int(NOW) + 600))), STRICTER),
    "UTF-16 JSON payload": (lambda f: f.token(raw_payload=json.dumps(claims()).encode("utf-16")), STRICTER),
    "lifetime over a day": (lambda f: f.token(claims(exp=int(NOW) + 2 * 86_400)), STRICTER),
    "control character in sub": (lambda f: f.token(claims(sub="al\nice")), STRICTER),
}


@pytest.fixture(scope="module")
def verifier(keys: KeyRing) -> TokenVerifier:
    verifier = TokenVerifier([ProviderSettings(name="diff", issuer=ISS, audiences=(AUD,),
                                               algorithms=("RS256", "HS256"), hs256_secret=SECRET)])
    verifier.set_keys("diff", parse_jwks({"keys": [public_jwk(keys.rsa, "k1")]}))
    return verifier


def library(token: str, keys: KeyRing) -> dict[str, Any] | Exception:
    try:
        header = jwt.get_unverified_header(token)
    except Exception as exc:  # any refusal counts as one
        return exc
    key: Any = SECRET if header.get("alg") == "HS256" else keys.rsa.public_key()
    try:
        return jwt.decode_complete(token, key, algorithms=["RS256", "HS256"], audience=AUD, issuer=ISS, leeway=30,
                                   options={"require": ["exp", "iss", "sub"]})
    except Exception as exc:
        return exc


@pytest.mark.parametrize("name", list(CASES))
def test_same_verdict_and_claims_as_pyjwt(name: str, keys: KeyRing, verifier: TokenVerifier) -> None:
    build, relation = CASES[name]
    token = build(Forge(keys))
    theirs = library(token, keys)
    try:
        ours = verifier.verify(token, time.time())
    except AuthError as exc:
        if relation == STRICTER:
            assert not isinstance(theirs, Exception), f"{name}: PyJWT refuses too ({theirs!r}); not stricter"
        else:
            assert isinstance(theirs, Exception), f"{name}: we refuse ({exc.reason}), PyJWT accepts"
        return
    assert relation == SAME, f"{name}: listed as stricter, but we accept"
    assert not isinstance(theirs, Exception), f"{name}: we accept, PyJWT refuses ({theirs!r})"
    header_seg, payload_seg, _ = token.encode().split(b".")
    assert _decode_json_object(header_seg, "header") == theirs["header"]
    payload = _decode_json_object(payload_seg, "payload")
    assert payload == theirs["payload"]
    assert (ours.user_id, ours.expires_at, ours.issuer) == (payload["sub"], payload["exp"], payload["iss"])
