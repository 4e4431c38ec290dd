"""Keys (generated once per session) and token builders shared by the ext_authz tests."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


@dataclass(frozen=True)
class KeyRing:
    rsa: rsa.RSAPrivateKey
    rsa2: rsa.RSAPrivateKey  # the rotated-in key
    attacker_rsa: rsa.RSAPrivateKey
    ec256: ec.EllipticCurvePrivateKey
    ec384: ec.EllipticCurvePrivateKey
    ed25519: ed25519.Ed25519PrivateKey


@pytest.fixture(scope="session")
def keys() -> KeyRing:
    return KeyRing(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa2=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        attacker_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec256=ec.generate_private_key(ec.SECP256R1()),
        ec384=ec.generate_private_key(ec.SECP384R1()),
        ed25519=ed25519.Ed25519PrivateKey.generate(),
    )


def public_jwk(private_key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    """The public JWK of a private key, with kid and any extra members."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    jwk = {k: v for k, v in jwk.items() if k not in ("key_ops",)}
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64url(json.dumps(value).encode())


def raw_token(header: Any, payload: Any, signature: bytes = b"") -> str:
    """Assemble a token by hand, for shapes PyJWT would refuse to produce."""
    return f"{b64json(header)}.{b64json(payload)}.{b64url(signature)}"


Signer = Callable[..., str]


@pytest.fixture(scope="session")
def sign() -> Signer:
    def _sign(payload: dict[str, Any], key: Any, alg: str, kid: str | None = None, **headers: Any) -> str:
        hdrs: dict[str, Any] = dict(headers)
        if kid is not None:
            hdrs["kid"] = kid
        # api_jws signs any bytes, so tests can sign claims that jwt.encode would refuse (e.g. iss=[...]).
        body = json.dumps(payload, separators=(",", ":")).encode()
        return jwt.api_jws.encode(body, key, algorithm=alg, headers=hdrs or None)

    return _sign
