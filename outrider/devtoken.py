"""Development tokens signed with the example's DEVELOPMENT-ONLY key (examples/keys/dev-private.pem)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt

DEV_KEY_WARNING = "DEVELOPMENT ONLY: signed with the published example key; never trust it in production."


def _kid_for(jwks_path: Path) -> str | None:
    try:
        doc = json.loads(jwks_path.read_text())
        keys = doc.get("keys", [])
        return str(keys[0]["kid"]) if keys and "kid" in keys[0] else None
    except (OSError, ValueError, KeyError, IndexError):
        return None


def mint_token(
    private_key_pem: bytes,
    *,
    subject: str,
    roles: list[str],
    tier: str,
    issuer: str,
    audience: str | None,
    ttl_s: int = 3600,
    email: str | None = None,
    kid: str | None = None,
    now: float | None = None,
    algorithm: str = "RS256",
) -> str:
    """Sign a token with the given key and claims."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "roles": roles,
        "tier": tier,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
    }
    if audience is not None:
        claims["aud"] = audience
    if email is not None:
        claims["email"] = email
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, private_key_pem, algorithm=algorithm, headers=headers)


def mint_dev_token(keys_dir: Path, issuer: str, audience: str | None, **kwargs: Any) -> str:
    """A token from the example's dev key; kid taken from the example JWKS."""
    pem = (keys_dir / "dev-private.pem").read_bytes()
    return mint_token(pem, issuer=issuer, audience=audience, kid=_kid_for(keys_dir / "jwks.json"), **kwargs)
