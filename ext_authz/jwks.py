"""JWKS documents parsed into prebuilt verification keys, and the pure refresh decisions (cooldown, backoff).

The sources that read and fetch them (file polling, HTTP) are in jwks_sources.py."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ext_authz.key_material import (
    EC_ALGORITHMS_BY_CURVE,
    EC_CURVES,
    MIN_RSA_BITS,
    OKP_ALGORITHMS_BY_CURVE,
    RSA_ALGORITHMS,
    SUPPORTED_ALGORITHMS,
    KeyMaterialError,
    PublicKey,
    algorithms_for,
    curve_of,
    is_pem,
    key_from_der_certificate,
    key_from_pem_certificate,
    keys_from_pem,
)

__all__ = [
    "EC_ALGORITHMS_BY_CURVE", "MIN_RSA_BITS", "OKP_ALGORITHMS_BY_CURVE", "RSA_ALGORITHMS", "SUPPORTED_ALGORITHMS",
    "JwksError", "KeySet", "PublicKey", "RefreshGate", "VerificationKey", "b64url_decode_strict", "backoff_delay",
    "parse_jwks",
]

_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
# The JWK members that carry the public key itself, per kty (RFC 7518 §6.2.1, §6.3.1; RFC 8037 §2).
_KEY_MEMBERS: Mapping[str, tuple[str, ...]] = MappingProxyType({"RSA": ("n", "e"), "EC": ("x", "y"), "OKP": ("x",)})


class JwksError(Exception):
    """A JWKS document or source is unusable; the message says what and where."""


def b64url_decode_strict(segment: str | bytes) -> bytes:
    """Decode unpadded base64url, refusing padding, foreign characters and non-canonical bits.

    Strictness matters: lenient decoders let many distinct strings map to one token,
    which defeats caching on the token text and hides tampering.
    """
    raw = segment.encode("ascii") if isinstance(segment, str) else segment
    if len(raw) % 4 == 1 or _B64URL.fullmatch(raw) is None:
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=") != raw:
        raise ValueError("non-canonical base64url")
    return data


@dataclass(frozen=True)
class VerificationKey:
    """One public key from a JWKS, built once, with the algorithms it may verify."""

    kid: str | None
    kty: str
    algorithms: frozenset[str]
    key: PublicKey = field(repr=False, compare=False)
    spki_sha256: str  # identifies the key material; used for equality and the set fingerprint


@dataclass(frozen=True)
class KeySet:
    """An immutable set of verification keys.

    `ordered` holds every usable key in document order, several under one kid (or none) included: the
    verifier tries each that fits, as jwt_verify_lib's verifyJwtWithoutTimeChecking does. `keys` maps
    each kid (None for keys without one) to its first key, for logs and lookups."""

    keys: Mapping[str | None, VerificationKey]
    fingerprint: str
    skipped: tuple[str, ...] = ()  # why each unusable JWKS entry was left out, for logging
    ordered: tuple[VerificationKey, ...] = ()

    def __post_init__(self) -> None:
        if not self.ordered:
            object.__setattr__(self, "ordered", tuple(self.keys.values()))


def _member_bytes(jwk: Mapping[str, Any], name: str, index: int) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JwksError(f"keys[{index}]: '{name}' missing or not a string")
    try:
        return b64url_decode_strict(value)
    except (ValueError, binascii.Error) as exc:
        raise JwksError(f"keys[{index}]: '{name}' is not base64url ({exc})") from None


def _checked(key: PublicKey, index: int) -> tuple[PublicKey, frozenset[str]]:
    try:
        return key, algorithms_for(key)[1]
    except KeyMaterialError as exc:
        raise JwksError(f"keys[{index}]: {exc}") from None


def _build_key(jwk: Mapping[str, Any], index: int) -> tuple[PublicKey, frozenset[str]]:
    """Build the public key for one JWK entry; only public members are read, never 'd'."""
    kty = jwk.get("kty")
    if kty == "RSA":
        n = int.from_bytes(_member_bytes(jwk, "n", index), "big")
        e = int.from_bytes(_member_bytes(jwk, "e", index), "big")
        try:
            rsa_key = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise JwksError(f"keys[{index}]: invalid RSA key ({exc})") from None
        return _checked(rsa_key, index)
    if kty == "EC":
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in EC_CURVES:
            raise JwksError(f"keys[{index}]: unsupported EC curve 'crv'={crv!r}")
        curve, size = EC_CURVES[crv]
        x = _member_bytes(jwk, "x", index)
        y = _member_bytes(jwk, "y", index)
        if len(x) != size or len(y) != size:
            raise JwksError(f"keys[{index}]: EC 'x'/'y' must be {size} bytes for {crv}")
        try:
            # from_encoded_point checks the point is on the curve.
            ec_key = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)
        except ValueError as exc:
            raise JwksError(f"keys[{index}]: invalid EC point ({exc})") from None
        return _checked(ec_key, index)
    if kty == "OKP":
        crv = jwk.get("crv")
        if crv != "Ed25519":
            raise JwksError(f"keys[{index}]: unsupported OKP curve 'crv'={crv!r}")
        x = _member_bytes(jwk, "x", index)
        if len(x) != 32:
            raise JwksError(f"keys[{index}]: Ed25519 'x' must be 32 bytes")
        try:
            ed_key = Ed25519PublicKey.from_public_bytes(x)
        except ValueError as exc:
            raise JwksError(f"keys[{index}]: invalid Ed25519 key ({exc})") from None
        return _checked(ed_key, index)
    raise JwksError(f"keys[{index}]: unsupported 'kty'={kty!r}")


def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _x5c_key(entry: Mapping[str, Any], index: int) -> PublicKey | None:
    """The key of the JWK's first x5c certificate (RFC 7517 §4.7: standard base64 DER), None without x5c."""
    chain = entry.get("x5c")
    if chain is None:
        return None
    if not isinstance(chain, list) or not chain or not all(isinstance(c, str) for c in chain):
        raise JwksError(f"keys[{index}]: 'x5c' is not a non-empty list of strings")
    try:
        der = base64.b64decode(chain[0], validate=True)
    except (ValueError, binascii.Error):
        raise JwksError(f"keys[{index}]: 'x5c'[0] is not base64") from None
    try:
        return key_from_der_certificate(der)
    except KeyMaterialError as exc:
        raise JwksError(f"keys[{index}]: 'x5c'[0]: {exc}") from None


def _entry_key(entry: Mapping[str, Any], index: int) -> tuple[PublicKey, frozenset[str]]:
    """The JWK's key from its members; with x5c, the first certificate's key must be the same one
    (RFC 7517 §4.7 "MUST match"), and a JWK with x5c but no key members takes the certificate's key."""
    from_cert = _x5c_key(entry, index)
    members = _KEY_MEMBERS.get(str(entry.get("kty")), ())
    if from_cert is not None and members and not any(name in entry for name in members):
        key, algorithms = _checked(from_cert, index)
        kty, crv = entry.get("kty"), entry.get("crv")
        if algorithms_for(key)[0] != kty or (crv is not None and crv != curve_of(key)):
            raise JwksError(f"keys[{index}]: 'x5c' certificate key is not of 'kty'={kty!r}"
                            + (f", 'crv'={crv!r}" if crv is not None else ""))
        return key, algorithms
    key, algorithms = _build_key(entry, index)
    if from_cert is not None and _spki(from_cert) != _spki(key):
        raise JwksError(f"keys[{index}]: 'x5c' certificate key does not match the JWK's key")
    return key, algorithms


def _parse_entry(entry: Any, index: int) -> VerificationKey:
    if not isinstance(entry, Mapping):
        raise JwksError(f"keys[{index}]: not a JSON object")
    use = entry.get("use")
    if use is not None and use != "sig":
        raise JwksError(f"keys[{index}]: 'use'={use!r} is not 'sig'")
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise JwksError(f"keys[{index}]: 'key_ops' does not allow 'verify'")
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwksError(f"keys[{index}]: 'kid' is not a string")
    public_key, algorithms = _entry_key(entry, index)
    declared = entry.get("alg")
    if declared is not None:
        # A key that names its algorithm may verify that algorithm only (RFC 7517 §4.4).
        if not isinstance(declared, str) or declared not in algorithms:
            raise JwksError(
                f"keys[{index}]: 'alg'={declared!r} is not supported for kty {entry.get('kty')!r}"
            )
        algorithms = frozenset({declared})
    return _verification_key(kid or None, str(entry["kty"]), algorithms, public_key)


def _verification_key(kid: str | None, kty: str, algorithms: frozenset[str], key: PublicKey) -> VerificationKey:
    # An empty kid is no kid, as in jwt_verify_lib (it matches every token kid).
    return VerificationKey(kid=kid or None, kty=kty, algorithms=algorithms, key=key,
                           spki_sha256=hashlib.sha256(_spki(key)).hexdigest())


def _fingerprint(keys: tuple[VerificationKey, ...]) -> str:
    # Sorted so that reordering a JWKS document is not mistaken for a rotation.
    material = sorted(
        json.dumps([k.kid, k.kty, sorted(k.algorithms), k.spki_sha256]) for k in keys
    )
    return hashlib.sha256("\n".join(material).encode()).hexdigest()


def _key_set(ordered: list[VerificationKey], skipped: list[str]) -> KeySet:
    if not ordered:
        detail = "; ".join(skipped) if skipped else "'keys' is empty"
        raise JwksError(f"JWKS has no usable signing key ({detail})")
    first: dict[str | None, VerificationKey] = {}
    for vkey in ordered:
        first.setdefault(vkey.kid, vkey)
    return KeySet(keys=MappingProxyType(first), fingerprint=_fingerprint(tuple(ordered)),
                  skipped=tuple(skipped), ordered=tuple(ordered))


def _from_pem(text: str) -> KeySet:
    """A PEM file of public keys and/or certificates: keys without kid (jwt_verify_lib's Jwks::PEM)."""
    try:
        keys = keys_from_pem(text)
    except KeyMaterialError as exc:
        raise JwksError(f"PEM: {exc}") from None
    ordered = []
    for key in keys:
        kty, algorithms = algorithms_for(key)
        ordered.append(_verification_key(None, kty, algorithms, key))
    return _key_set(ordered, [])


def _is_certificate_map(parsed: Mapping[str, Any]) -> bool:
    # jwt_verify_lib's shouldCheckX509: an object without "keys" whose every member is a PEM certificate.
    return bool(parsed) and "keys" not in parsed and all(
        isinstance(v, str) and "-----BEGIN CERTIFICATE-----" in v for v in parsed.values())


def _from_certificate_map(parsed: Mapping[str, Any]) -> KeySet:
    """{"kid": "-----BEGIN CERTIFICATE-----..."} (Google's x509 key format, read by jwt_verify_lib)."""
    ordered: list[VerificationKey] = []
    skipped: list[str] = []
    for kid, pem in parsed.items():
        try:
            if not kid:
                raise KeyMaterialError("has an empty kid")
            key = key_from_pem_certificate(pem)
            kty, algorithms = algorithms_for(key)
        except KeyMaterialError as exc:
            skipped.append(f"certificate {kid[:100]!r}: {exc}")
            continue
        ordered.append(_verification_key(kid, kty, algorithms, key))
    return _key_set(ordered, skipped)


def parse_jwks(document: bytes | str | Mapping[str, Any]) -> KeySet:
    """Parse a key document; unusable entries are skipped (and listed), an unusable document raises JwksError.

    Accepted: a JWKS (RFC 7517 §5), an object mapping kids to PEM certificates, or PEM text of public keys
    and certificates (keys without kid). The format is told by the content, not the file name."""
    if isinstance(document, bytes | str):
        try:
            text = document.decode("utf-8") if isinstance(document, bytes) else document
        except UnicodeDecodeError as exc:
            raise JwksError(f"JWKS is not valid JSON (not UTF-8: {exc})") from None
        if is_pem(text):
            return _from_pem(text)
        try:
            parsed: Any = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise JwksError(f"JWKS is not valid JSON: {exc}") from None
    else:
        parsed = document
    if not isinstance(parsed, Mapping):
        raise JwksError("JWKS document must be a JSON object")
    if _is_certificate_map(parsed):
        return _from_certificate_map(parsed)
    entries = parsed.get("keys")
    if not isinstance(entries, list):
        raise JwksError("JWKS member 'keys' is missing or not a list")

    ordered: list[VerificationKey] = []
    skipped: list[str] = []
    for index, entry in enumerate(entries):
        try:
            ordered.append(_parse_entry(entry, index))
        except JwksError as exc:
            skipped.append(str(exc))
    return _key_set(ordered, skipped)


class RefreshGate:
    """Pure cooldown decision: allow a fetch only if none happened within cooldown_s."""

    def __init__(self, cooldown_s: float) -> None:
        if cooldown_s < 0:
            raise ValueError("cooldown_s must be >= 0")
        self._cooldown_s = cooldown_s
        self._last: float | None = None

    def should_fetch(self, now: float) -> bool:
        """Return True and record the fetch when the cooldown has passed, else False."""
        if self._last is not None and now - self._last < self._cooldown_s:
            return False
        self._last = now
        return True

    def record(self, now: float) -> None:
        """Note a fetch that happened for another reason (start, schedule) so it counts too."""
        self._last = now


def backoff_delay(failures: int, base_s: float, cap_s: float) -> float:
    """Exponential retry delay after `failures` consecutive failures (>= 1), capped."""
    return float(min(cap_s, base_s * (2 ** min(max(failures - 1, 0), 30))))
