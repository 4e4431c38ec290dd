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

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | Ed25519PublicKey

# Every algorithm the gateway can verify. HS256 is here for the settings allow-list only:
# an HMAC key never comes from a JWKS (kty "oct" is skipped), only from configuration.
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256"})
EC_ALGORITHMS_BY_CURVE: Mapping[str, frozenset[str]] = MappingProxyType(
    {"P-256": frozenset({"ES256"}), "P-384": frozenset({"ES384"})}
)
OKP_ALGORITHMS_BY_CURVE: Mapping[str, frozenset[str]] = MappingProxyType(
    {"Ed25519": frozenset({"EdDSA"})}
)
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "HS256"}
)

# Below NIST's 2048-bit floor an RSA key is refused outright rather than warned about.
MIN_RSA_BITS = 2048

_EC_CURVES: Mapping[str, tuple[ec.EllipticCurve, int]] = MappingProxyType(
    {"P-256": (ec.SECP256R1(), 32), "P-384": (ec.SECP384R1(), 48)}
)
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")


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
    """An immutable set of verification keys keyed by kid (None for a key without kid)."""

    keys: Mapping[str | None, VerificationKey]
    fingerprint: str
    skipped: tuple[str, ...] = ()  # why each unusable JWKS entry was left out, for logging


def _member_bytes(jwk: Mapping[str, Any], name: str, index: int) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JwksError(f"keys[{index}]: '{name}' missing or not a string")
    try:
        return b64url_decode_strict(value)
    except (ValueError, binascii.Error) as exc:
        raise JwksError(f"keys[{index}]: '{name}' is not base64url ({exc})") from None


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
        if rsa_key.key_size < MIN_RSA_BITS:
            raise JwksError(
                f"keys[{index}]: RSA key is {rsa_key.key_size} bits, minimum is {MIN_RSA_BITS}"
            )
        return rsa_key, RSA_ALGORITHMS
    if kty == "EC":
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in _EC_CURVES:
            raise JwksError(f"keys[{index}]: unsupported EC curve 'crv'={crv!r}")
        curve, size = _EC_CURVES[crv]
        x = _member_bytes(jwk, "x", index)
        y = _member_bytes(jwk, "y", index)
        if len(x) != size or len(y) != size:
            raise JwksError(f"keys[{index}]: EC 'x'/'y' must be {size} bytes for {crv}")
        try:
            # from_encoded_point checks the point is on the curve.
            ec_key = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)
        except ValueError as exc:
            raise JwksError(f"keys[{index}]: invalid EC point ({exc})") from None
        return ec_key, EC_ALGORITHMS_BY_CURVE[crv]
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
        return ed_key, OKP_ALGORITHMS_BY_CURVE["Ed25519"]
    raise JwksError(f"keys[{index}]: unsupported 'kty'={kty!r}")


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
    public_key, algorithms = _build_key(entry, index)
    declared = entry.get("alg")
    if declared is not None:
        # A key that names its algorithm may verify that algorithm only (RFC 7517 §4.4).
        if not isinstance(declared, str) or declared not in algorithms:
            raise JwksError(
                f"keys[{index}]: 'alg'={declared!r} is not supported for kty {entry.get('kty')!r}"
            )
        algorithms = frozenset({declared})
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return VerificationKey(
        kid=kid,
        kty=str(entry["kty"]),
        algorithms=algorithms,
        key=public_key,
        spki_sha256=hashlib.sha256(spki).hexdigest(),
    )


def _fingerprint(keys: Mapping[str | None, VerificationKey]) -> str:
    # Sorted so that reordering a JWKS document is not mistaken for a rotation.
    material = sorted(
        json.dumps([k.kid, k.kty, sorted(k.algorithms), k.spki_sha256]) for k in keys.values()
    )
    return hashlib.sha256("\n".join(material).encode()).hexdigest()


def parse_jwks(document: bytes | str | Mapping[str, Any]) -> KeySet:
    """Parse a JWKS; unusable entries are skipped (and listed), an unusable document raises JwksError."""
    if isinstance(document, bytes | str):
        try:
            text = document.decode("utf-8") if isinstance(document, bytes) else document
            parsed: Any = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise JwksError(f"JWKS is not valid JSON: {exc}") from None
    else:
        parsed = document
    if not isinstance(parsed, Mapping):
        raise JwksError("JWKS document must be a JSON object")
    entries = parsed.get("keys")
    if not isinstance(entries, list):
        raise JwksError("JWKS member 'keys' is missing or not a list")

    keys: dict[str | None, VerificationKey] = {}
    skipped: list[str] = []
    for index, entry in enumerate(entries):
        try:
            vkey = _parse_entry(entry, index)
        except JwksError as exc:
            skipped.append(str(exc))
            continue
        if vkey.kid in keys:
            # Two keys under one kid make key choice ambiguous; the first one wins.
            skipped.append(f"keys[{index}]: duplicate 'kid'={vkey.kid!r}, ignored")
            continue
        keys[vkey.kid] = vkey
    if not keys:
        detail = "; ".join(skipped) if skipped else "'keys' is empty"
        raise JwksError(f"JWKS has no usable signing key ({detail})")
    return KeySet(
        keys=MappingProxyType(keys), fingerprint=_fingerprint(keys), skipped=tuple(skipped)
    )


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
