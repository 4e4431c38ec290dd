"""Public verification keys: which algorithms each key may verify, and keys read from PEM and X.509 certificates."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | Ed25519PublicKey

# Every algorithm the gateway can verify. HS256 is here for the settings allow-list only:
# an HMAC key never comes from a JWKS (kty "oct" is skipped), only from configuration.
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS_BY_CURVE: Mapping[str, frozenset[str]] = MappingProxyType(
    {"P-256": frozenset({"ES256"}), "P-384": frozenset({"ES384"}), "P-521": frozenset({"ES512"})}
)
OKP_ALGORITHMS_BY_CURVE: Mapping[str, frozenset[str]] = MappingProxyType(
    {"Ed25519": frozenset({"EdDSA"})}
)
SUPPORTED_ALGORITHMS = frozenset(
    RSA_ALGORITHMS | {"ES256", "ES384", "ES512", "EdDSA", "HS256"}
)

# Below NIST's 2048-bit floor an RSA key is refused outright rather than warned about.
MIN_RSA_BITS = 2048
# jwt_verify_lib (src/jwks.cc, createRsaFromJwk) refuses any other public exponent as non-standard;
# so do we, for every way a key arrives, so no key verifies here that Envoy's verifier would drop.
RSA_EXPONENTS = frozenset({3, 65537})

# JWK curve name -> (curve, coordinate bytes). P-521 coordinates are 66 bytes (RFC 7518 §6.2.1.2).
EC_CURVES: Mapping[str, tuple[ec.EllipticCurve, int]] = MappingProxyType(
    {"P-256": (ec.SECP256R1(), 32), "P-384": (ec.SECP384R1(), 48), "P-521": (ec.SECP521R1(), 66)}
)
_CURVE_BY_OPENSSL_NAME = MappingProxyType({curve.name: jwk_name for jwk_name, (curve, _) in EC_CURVES.items()})

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)\r?\n?-----END \1-----", re.DOTALL
)


class KeyMaterialError(ValueError):
    """A key, certificate or PEM text is unusable; the message says why."""


def algorithms_for(key: object) -> tuple[str, frozenset[str]]:
    """(kty, algorithms) a public key may verify; KeyMaterialError for a type, curve or size we refuse."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyMaterialError(f"RSA key is {key.key_size} bits, minimum is {MIN_RSA_BITS}")
        exponent = key.public_numbers().e
        if exponent not in RSA_EXPONENTS:
            raise KeyMaterialError(f"RSA public exponent {exponent} is not 3 or 65537")
        return "RSA", RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _CURVE_BY_OPENSSL_NAME.get(key.curve.name)
        if crv is None:
            raise KeyMaterialError(f"unsupported EC curve {key.curve.name}")
        return "EC", EC_ALGORITHMS_BY_CURVE[crv]
    if isinstance(key, Ed25519PublicKey):
        return "OKP", OKP_ALGORITHMS_BY_CURVE["Ed25519"]
    raise KeyMaterialError(f"unsupported key type {type(key).__name__}")


def curve_of(key: PublicKey) -> str | None:
    """The JWK `crv` name of an EC or OKP key (RFC 7518 §6.2.1.1, RFC 8037 §2); None for RSA."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _CURVE_BY_OPENSSL_NAME.get(key.curve.name)
    return "Ed25519" if isinstance(key, Ed25519PublicKey) else None


def _checked(key: object) -> PublicKey:
    algorithms_for(key)
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | Ed25519PublicKey)
    return key


def key_from_der_certificate(der: bytes) -> PublicKey:
    """The public key of a DER certificate (a JWK's x5c entry). The chain is not validated: the JWKS
    source is what is trusted, as with jwt_verify_lib's certificate keys."""
    try:
        certificate = x509.load_der_x509_certificate(der)
        return _checked(certificate.public_key())
    except KeyMaterialError:
        raise
    except ValueError as exc:
        raise KeyMaterialError(f"not a DER X.509 certificate ({exc})") from None


def is_pem(text: str) -> bool:
    """PEM text (explanatory lines before the blocks allowed, RFC 7468 §5.2), not a JSON document."""
    return "-----BEGIN " in text and not text.lstrip().startswith(("{", "["))


def keys_from_pem(text: str) -> list[PublicKey]:
    """Every key of a PEM text of PUBLIC KEY and CERTIFICATE blocks (anything else is refused by name).

    jwt_verify_lib reads a PEM public key (Jwks::createFromPem) and PEM certificates (its kid→certificate
    map); we accept both here, one or more blocks, each a key without kid."""
    blocks = _PEM_BLOCK.findall(text)
    if not blocks:
        raise KeyMaterialError("no PEM block found")
    keys: list[PublicKey] = []
    for index, (label, body) in enumerate(blocks):
        pem = f"-----BEGIN {label}-----\n{body.strip()}\n-----END {label}-----\n".encode("ascii", "replace")
        where = f"PEM block {index} ({label})"
        try:
            if label == "PUBLIC KEY":
                keys.append(_checked(load_pem_public_key(pem)))
            elif label == "CERTIFICATE":
                keys.append(_checked(x509.load_pem_x509_certificate(pem).public_key()))
            elif "PRIVATE" in label:
                raise KeyMaterialError("is a private key: give the public key or certificate only")
            else:
                raise KeyMaterialError("is not a PUBLIC KEY or CERTIFICATE")
        except KeyMaterialError as exc:
            raise KeyMaterialError(f"{where} {exc}" if str(exc).startswith("is ") else f"{where}: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise KeyMaterialError(f"{where}: unreadable ({exc})") from None
    return keys


def key_from_pem_certificate(text: str) -> PublicKey:
    """The key of exactly one PEM certificate (a value of the kid→certificate map)."""
    blocks = _PEM_BLOCK.findall(text)
    if len(blocks) != 1 or blocks[0][0] != "CERTIFICATE":
        raise KeyMaterialError("is not exactly one PEM CERTIFICATE")
    return keys_from_pem(text)[0]
