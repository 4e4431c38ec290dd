"""Pure JWT verification: token text + configured providers + key sets + now -> Identity or AuthError."""

from __future__ import annotations

import binascii
import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jwt import exceptions as jwt_exceptions
from jwt.algorithms import Algorithm, HMACAlgorithm, get_default_algorithms

from ext_authz.jwks import SUPPORTED_ALGORITHMS, KeySet, VerificationKey, b64url_decode_strict

# HS256 needs a key at least as long as its hash output (RFC 7518 §3.2).
MIN_HS256_SECRET_BYTES = 32
# The longest a token may live unless the provider says otherwise (Envoy's jwt_authn has `max_lifetime`
# per provider too; RFC 6750 §5.3: token servers SHOULD issue short-lived bearer tokens).
DEFAULT_MAX_LIFETIME_S = 86_400.0
# NumericDate (RFC 7519 §2) is seconds since 1970; before 1970 or after 9999-12-31 is no real token's date.
MAX_NUMERIC_DATE = 253_402_300_799.0
# C0 controls and DEL: never part of a user id, e-mail, tier or role.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ProviderSettings:
    """One trusted token issuer and what its tokens must look like."""

    name: str
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    hs256_secret: bytes | None = None
    leeway_s: float = 30.0
    roles_claim: str = "roles"
    tier_claim: str = "tier"
    email_claim: str = "email"
    default_tier: str = "free"
    max_lifetime_s: float = DEFAULT_MAX_LIFETIME_S
    # The configured HS256 secret's kid: a token naming another kid is refused. None: a key without kid,
    # which (as a JWK without kid in jwt_verify_lib) is tried whatever kid the token names.
    hs256_kid: str | None = None
    # Accepted `typ` header values (RFC 7515 §4.1.9, compared as normalise_typ does); empty: not checked.
    required_typ: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Tuples even when a loader hands lists, so the settings stay hashable and immutable.
        object.__setattr__(self, "audiences", tuple(self.audiences))
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        object.__setattr__(self, "required_typ", tuple(normalise_typ(t) for t in self.required_typ))
        if not self.name:
            raise ValueError("provider name must not be empty")
        if not self.issuer:
            raise ValueError(f"provider {self.name!r}: issuer must not be empty")
        if not self.algorithms:
            raise ValueError(f"provider {self.name!r}: algorithms must not be empty")
        unknown = sorted(set(self.algorithms) - SUPPORTED_ALGORITHMS)
        if unknown:
            raise ValueError(
                f"provider {self.name!r}: unsupported algorithms {unknown}, "
                f"choose from {sorted(SUPPORTED_ALGORITHMS)}"
            )
        if not all(isinstance(a, str) and a for a in self.audiences):
            raise ValueError(f"provider {self.name!r}: audiences must be non-empty strings")
        if not (math.isfinite(self.leeway_s) and self.leeway_s >= 0):
            raise ValueError(f"provider {self.name!r}: leeway_s must be a finite number >= 0")
        if not (math.isfinite(self.max_lifetime_s) and self.max_lifetime_s > 0):
            raise ValueError(f"provider {self.name!r}: max_lifetime_s must be a finite number > 0")
        if "HS256" in self.algorithms:
            if self.hs256_secret is None:
                raise ValueError(f"provider {self.name!r}: HS256 requires hs256_secret")
            if len(self.hs256_secret) < MIN_HS256_SECRET_BYTES:
                raise ValueError(
                    f"provider {self.name!r}: hs256_secret must be at least "
                    f"{MIN_HS256_SECRET_BYTES} bytes"
                )
            try:
                # PyJWT refuses PEM/SSH/DER public keys as HMAC secrets; fail at start, not per request.
                HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(self.hs256_secret)
            except jwt_exceptions.InvalidKeyError as exc:
                raise ValueError(f"provider {self.name!r}: hs256_secret: {exc}") from None
        if self.hs256_kid is not None and (not self.hs256_kid or "HS256" not in self.algorithms):
            raise ValueError(f"provider {self.name!r}: hs256_kid needs HS256 and must not be empty")
        if not all(self.required_typ):
            raise ValueError(f"provider {self.name!r}: required_typ values must not be empty")


def normalise_typ(value: str) -> str:
    """`typ` as compared: case-insensitively (RFC 7515 §4.1.9: media type names are), and without an
    `application/` prefix, which RFC 7515 §4.1.9 lets a producer omit when the type has no other `/`."""
    lowered = value.strip().lower()
    rest = lowered.removeprefix("application/")
    return rest if "/" not in rest else lowered


@dataclass(frozen=True)
class Identity:
    """Who a verified token says the caller is."""

    user_id: str
    email: str | None
    roles: tuple[str, ...]
    tier: str
    expires_at: float
    issuer: str
    provider: str
    kid: str | None


class AuthError(Exception):
    """reason: short stable machine code used in logs/metrics, never shown to the client."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class UnknownKeyError(AuthError):
    """The token names a key we do not hold; the adapter asks the provider's key source to refresh."""

    def __init__(self, provider: str, detail: str = "") -> None:
        super().__init__("unknown_kid", detail)
        self.provider = provider


@dataclass(frozen=True)
class _Keyring:
    """A provider's keys in document order, each narrowed to the algorithms PyJWT accepts it for."""

    ordered: tuple[VerificationKey, ...]
    kids: frozenset[str]


def _build_keyring(keys: KeySet, algorithms: Mapping[str, Algorithm]) -> _Keyring:
    ordered = []
    for vkey in keys.ordered:
        usable = frozenset(alg for alg in vkey.algorithms if _pyjwt_accepts(algorithms[alg], vkey))
        if usable != vkey.algorithms:
            vkey = dataclasses.replace(vkey, algorithms=usable)
        ordered.append(vkey)
    return _Keyring(ordered=tuple(ordered), kids=frozenset(k.kid for k in ordered if k.kid is not None))


def _pyjwt_accepts(algorithm: Algorithm, vkey: VerificationKey) -> bool:
    """PyJWT's own key checks (type, curve, minimum size), run once per key rather than per request."""
    try:
        algorithm.prepare_key(vkey.key)
    except Exception:  # any refusal means this key never verifies this algorithm
        return False
    return algorithm.check_key_length(vkey.key) is None


class _Provider:
    __slots__ = ("keyring", "settings")

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.keyring: _Keyring | None = None


def _reject_constant(name: str) -> Any:
    # NaN/Infinity are not JSON and would make time comparisons silently pass.
    raise ValueError(f"non-standard JSON constant {name}")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate members let two parsers disagree about one token (claim smuggling).
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate JSON member")
    return result


def _decode_json_object(segment: bytes, what: str) -> dict[str, Any]:
    try:
        text = b64url_decode_strict(segment).decode("utf-8")
        value = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_reject_constant)
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise AuthError("malformed", f"{what}: {exc}") from None
    if not isinstance(value, dict):
        raise AuthError("malformed", f"{what} is not a JSON object")
    return value


def _numeric_claim(payload: Mapping[str, Any], name: str) -> float | None:
    if name not in payload:
        return None
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError("bad_claim", f"'{name}' is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise AuthError("bad_claim", f"'{name}' is out of range") from None
    if not math.isfinite(number):
        raise AuthError("bad_claim", f"'{name}' is not finite")
    if not 0 <= number <= MAX_NUMERIC_DATE:
        # A negative or far-future date is never an issuer's: refuse it rather than compute with it.
        raise AuthError("bad_claim", f"'{name}' is not a plausible NumericDate")
    return number


class TokenVerifier:
    """Verifies compact JWS tokens against configured providers; raises only AuthError."""

    def __init__(self, providers: Sequence[ProviderSettings], max_token_bytes: int = 8192) -> None:
        if max_token_bytes <= 0:
            raise ValueError("max_token_bytes must be > 0")
        self._max_token_bytes = max_token_bytes
        self._by_issuer: dict[str, _Provider] = {}
        self._by_name: dict[str, _Provider] = {}
        for settings in providers:
            if settings.issuer in self._by_issuer:
                raise ValueError(f"issuer {settings.issuer!r} configured twice")
            if settings.name in self._by_name:
                raise ValueError(f"provider name {settings.name!r} configured twice")
            state = _Provider(settings)
            self._by_issuer[settings.issuer] = state
            self._by_name[settings.name] = state
        # PyJWT's algorithm objects, restricted to the ones we support. We call them directly
        # rather than through PyJWS.decode: the token is already parsed (more strictly) here, and
        # PyJWS's per-character base64 check re-parsing it costs ~40 us, twice the RSA verify.
        defaults = get_default_algorithms()
        self._algorithms: Mapping[str, Algorithm] = {alg: defaults[alg] for alg in SUPPORTED_ALGORITHMS}

    def set_keys(self, provider: str, keys: KeySet) -> None:
        """Install a provider's new key set (one attribute swap, so readers see old or new)."""
        try:
            state = self._by_name[provider]
        except KeyError:
            raise ValueError(f"unknown provider {provider!r}") from None
        state.keyring = _build_keyring(keys, self._algorithms)

    def verify(self, token: str, now: float) -> Identity:
        """Verify signature and claims of `token` at time `now` (seconds since the epoch)."""
        try:
            return self._verify(token, now)
        except AuthError:
            raise
        except Exception as exc:  # the contract is "AuthError or nothing"
            raise AuthError("malformed", f"unexpected {type(exc).__name__}") from None

    def _verify(self, token: str, now: float) -> Identity:
        # Size first: nothing below (base64, JSON, crypto) runs on an oversized token.
        if not isinstance(token, str):
            raise AuthError("malformed", "token is not a string")
        if len(token) > self._max_token_bytes:
            raise AuthError("token_too_large", f"{len(token)} characters")
        try:
            raw = token.encode("ascii")
        except UnicodeEncodeError:
            if len(token.encode("utf-8", "surrogatepass")) > self._max_token_bytes:
                raise AuthError("token_too_large", "non-ASCII token over the byte limit") from None
            raise AuthError("malformed", "token is not ASCII") from None

        segments = raw.split(b".")
        if len(segments) != 3:
            raise AuthError("malformed", f"{len(segments)} segments, expected 3")
        header_seg, payload_seg, signature_seg = segments
        if not header_seg or not payload_seg:
            raise AuthError("malformed", "empty header or payload segment")
        header = _decode_json_object(header_seg, "header")
        payload = _decode_json_object(payload_seg, "payload")
        try:
            signature = b64url_decode_strict(signature_seg)
        except (ValueError, binascii.Error):
            raise AuthError("malformed", "signature is not base64url") from None

        alg = header.get("alg")
        if not isinstance(alg, str):
            raise AuthError("malformed", "header 'alg' missing or not a string")
        if alg.strip().lower() == "none":
            raise AuthError("alg_not_allowed", "unsigned token")
        if "crit" in header:
            crit = header["crit"]
            if not isinstance(crit, list) or not all(isinstance(c, str) for c in crit):
                raise AuthError("malformed", "'crit' is not a list of strings")
            # We implement no JWS extensions, so any critical one must be refused (RFC 7515 §4.1.11).
            raise AuthError("crit_unsupported", f"crit={crit!r}")
        if "b64" in header:
            # RFC 7797 unencoded payloads are only valid when listed in crit, which we refuse.
            raise AuthError("malformed", "'b64' header without crit")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed", "header 'kid' is not a string")
        kid = kid or None  # an empty kid is no kid, as in jwt_verify_lib
        # jku/x5u/jwk/x5c are never read: keys come only from our own KeySet.

        # The unverified iss only picks which provider's keys to try; the signature then vouches for it.
        issuer = payload.get("iss")
        if issuer is None:
            raise AuthError("missing_claim", "'iss' missing")
        if not isinstance(issuer, str):
            raise AuthError("bad_issuer", "'iss' is not a string")
        state = self._by_issuer.get(issuer)
        if state is None:
            raise AuthError("unknown_issuer", issuer[:200])
        settings = state.settings
        if alg not in settings.algorithms:
            raise AuthError("alg_not_allowed", f"{alg[:20]!r} not allowed for {settings.name}")

        if settings.required_typ:
            typ = header.get("typ")
            if not isinstance(typ, str) or normalise_typ(typ) not in settings.required_typ:
                raise AuthError("bad_typ", f"typ={str(typ)[:40]!r}")

        # The algorithm is the single one chosen above, never looked up again from the header.
        signing_input = raw[: len(header_seg) + 1 + len(payload_seg)]
        verifier = self._algorithms[alg]
        for key in self._candidate_keys(state, alg, kid):
            try:
                valid = verifier.verify(signing_input, key, signature)
            except Exception:  # a verifier that raises has not verified anything
                valid = False
            if valid:
                return self._check_claims(payload, settings, kid, now)
        raise AuthError("bad_signature", f"provider {settings.name}")

    @staticmethod
    def _candidate_keys(state: _Provider, alg: str, kid: str | None) -> list[Any]:
        """Every key that may have signed the token, in key-set order (jwt_verify_lib, src/verify.cc
        verifyJwtWithoutTimeChecking): a key whose kid differs from the token's is skipped, a key without
        kid and a token without kid match any; then the key must fit the algorithm. An empty kid is none."""
        settings = state.settings
        if alg == "HS256":
            # The configured secret is the only HMAC key; a JWKS key is never used as one.
            if settings.hs256_secret is None:  # excluded by ProviderSettings; kept for safety
                raise AuthError("alg_not_allowed", "HS256 without a configured secret")
            if kid is not None and settings.hs256_kid is not None and kid != settings.hs256_kid:
                # Not an UnknownKeyError: a JWKS refresh cannot bring a new shared secret.
                raise AuthError("unknown_kid", f"kid {kid[:100]!r} is not the HS256 secret's")
            return [settings.hs256_secret]
        keyring = state.keyring
        if keyring is None:
            raise UnknownKeyError(settings.name, "no keys loaded")
        matching = [k for k in keyring.ordered if kid is None or k.kid is None or k.kid == kid]
        fitting = [k.key for k in matching if alg in k.algorithms]
        if fitting:
            return fitting
        if kid is not None and kid not in keyring.kids:
            # Perhaps rotated in since the last fetch: the adapter asks the key source to refresh.
            raise UnknownKeyError(settings.name, f"kid {kid[:100]!r}")
        if matching and kid is not None:
            raise AuthError("key_alg_mismatch", f"key {kid[:100]!r} cannot verify {alg}")
        raise UnknownKeyError(settings.name, f"no kid and no {alg} key")

    @staticmethod
    def _check_claims(
        payload: Mapping[str, Any], settings: ProviderSettings, kid: str | None, now: float
    ) -> Identity:
        leeway = settings.leeway_s
        exp = _numeric_claim(payload, "exp")
        if exp is None:
            raise AuthError("missing_claim", "'exp' missing")
        if now > exp + leeway:
            raise AuthError("expired", f"exp={exp}")
        nbf = _numeric_claim(payload, "nbf")
        if nbf is not None and now + leeway < nbf:
            raise AuthError("not_yet_valid", f"nbf={nbf}")
        iat = _numeric_claim(payload, "iat")
        if iat is not None and iat > now + leeway:
            raise AuthError("issued_in_future", f"iat={iat}")
        # A stolen token must not be good for years. Envoy's jwt_authn `max_lifetime` (jwks_cache.cc,
        # isLifetimeAllowed) allows a token only while exp - now < max_lifetime, with no clock skew; we
        # apply that same rule, and also bound exp - iat by it (a token issued long ago with a long life).
        if exp - now >= settings.max_lifetime_s:
            raise AuthError("lifetime_too_long", f"exp-now={exp - now:.0f}s")
        if iat is not None and exp - iat > settings.max_lifetime_s:
            raise AuthError("lifetime_too_long", f"exp-iat={exp - iat:.0f}s")

        if payload.get("iss") != settings.issuer:
            raise AuthError("bad_issuer", "issuer changed after provider selection")

        # jwt_verify_lib's Jwt::parseFromString refuses these types whatever the provider's settings.
        if "jti" in payload and not isinstance(payload["jti"], str):
            raise AuthError("bad_claim", "'jti' is not a string")
        token_auds: list[Any] = []
        if "aud" in payload:
            aud = payload["aud"]
            token_auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else [None]
            if not all(isinstance(a, str) for a in token_auds):
                raise AuthError("bad_audience", "'aud' is not a string or list of strings")
        if settings.audiences:
            if "aud" not in payload:
                raise AuthError("missing_claim", "'aud' missing")
            if not set(token_auds).intersection(settings.audiences):
                raise AuthError("bad_audience", "no configured audience in 'aud'")

        if "sub" not in payload:
            raise AuthError("missing_claim", "'sub' missing")
        sub = payload["sub"]
        if not isinstance(sub, str) or not sub:
            raise AuthError("bad_claim", "'sub' is not a non-empty string")

        roles_value = payload.get(settings.roles_claim)
        roles: tuple[str, ...]
        if roles_value is None:
            roles = ()
        elif isinstance(roles_value, str):
            roles = (roles_value,)
        elif isinstance(roles_value, list) and all(isinstance(r, str) for r in roles_value):
            roles = tuple(roles_value)
        else:
            raise AuthError("bad_claim", f"'{settings.roles_claim}' is not a list of strings")

        email = payload.get(settings.email_claim)
        if email is not None and not isinstance(email, str):
            raise AuthError("bad_claim", f"'{settings.email_claim}' is not a string")

        tier = payload.get(settings.tier_claim)
        if tier is None:
            tier = settings.default_tier
        elif not isinstance(tier, str) or not tier:
            raise AuthError("bad_claim", f"'{settings.tier_claim}' is not a non-empty string")

        for name, value in (("sub", sub), (settings.email_claim, email), (settings.tier_claim, tier), *(
                (settings.roles_claim, role) for role in roles)):
            if value is not None and _CONTROL.search(value):
                # Identity values become upstream headers: a CR, LF or NUL there is refused by Envoy (a 500)
                # or splits a header; no issuer means one, so the token is refused instead.
                raise AuthError("bad_claim", f"'{name}' contains a control character")

        return Identity(
            user_id=sub,
            email=email,
            roles=roles,
            tier=tier,
            expires_at=exp,
            issuer=settings.issuer,
            provider=settings.name,
            kid=kid,
        )
