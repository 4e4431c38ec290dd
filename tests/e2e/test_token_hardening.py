"""Tokens and keys through a real Envoy (issue 11, class 6): lifetimes and dates, floods of forged tokens
(429 once over the per-client budget, whatever address the client claims), RFC 6750's 400 and 403 answers."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import start_stack
from tests.harness import KEYS_DIR, Stack, example_config_dict

PROFILE = "/api/v1/users/profile"


def signed(stack: Stack, key: Any = None, **claims: Any) -> str:
    """A token over the example provider's claims, signed by the dev key (or `key`), with claims overridden."""
    provider = stack.data["auth"]["providers"][0]
    now = int(time.time())
    body: dict[str, Any] = {"iss": provider["issuer"], "aud": provider["audiences"][0], "sub": "alice",
                            "roles": ["user"], "iat": now, "exp": now + 600}
    for name, value in claims.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    kid = json.loads((KEYS_DIR / "jwks.json").read_text())["keys"][0]["kid"]
    pem = key if key is not None else (KEYS_DIR / "dev-private.pem").read_bytes()
    return jwt.encode(body, pem, algorithm="RS256", headers={"kid": kid})


def get(stack: Stack, token: str, path: str = PROFILE, method: str = "GET",
        extra: list[tuple[str, str]] | None = None) -> httpx.Response:
    headers = [("authorization", f"Bearer {token}"), *(extra or [])]
    with stack.client() as client:
        return client.request(method, path, headers=headers)


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("tokens"))
    yield running
    running.stop()


# --- 1. lifetimes and dates ------------------------------------------------------------------------


@pytest.mark.parametrize(("claims", "status"), [
    ({}, 200),
    ({"exp": int(time.time()) + 86_400 - 60}, 200),
    # "an exp millions of years away" (issue 11): refused, as anything beyond max_lifetime_s (24 h).
    ({"exp": int(time.time()) + 3_000_000 * 365 * 86_400}, 401),
    ({"exp": int(time.time()) + 90 * 86_400}, 401),
    ({"iat": None, "exp": int(time.time()) + 2 * 86_400}, 401),
    ({"iat": int(time.time()) + 3600}, 401),  # issued in the future beyond the leeway
    ({"iat": -1}, 401),
    ({"nbf": -5}, 401),
], ids=["fresh", "just-under-24h", "millions-of-years", "ninety-days", "two-days-no-iat", "iat-in-future",
        "negative-iat", "negative-nbf"])
def test_token_lifetime_and_dates(hardened: Stack, claims: dict[str, Any], status: int) -> None:
    response = get(hardened, signed(hardened, **claims))
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


# --- 5. RFC 6750 answers ---------------------------------------------------------------------------


def test_forbidden_says_insufficient_scope(hardened: Stack) -> None:
    # RFC 6750 §3.1: a valid token lacking the privileges: 403 with error="insufficient_scope".
    response = get(hardened, signed(hardened), path="/api/v1/admin/stats")
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'
    assert response.json()["error"] == "forbidden"


@pytest.mark.parametrize("second", ["same", "other", "garbage"])
def test_two_authorization_headers_are_400(hardened: Stack, second: str) -> None:
    # Two Authorization headers (Envoy hands them to ext_authz joined with a comma): RFC 6750 §3.1
    # invalid_request, 400 — not 401, and never the first or the second one alone.
    token = signed(hardened)
    other = {"same": token, "other": signed(hardened, sub="bob"), "garbage": "x"}[second]
    response = get(hardened, token, extra=[("authorization", f"Bearer {other}")])
    assert response.status_code == 400, response.text
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_request"'
    assert response.json()["error"] == "invalid_request"


# --- 4. a flood of forged signatures ----------------------------------------------------------------


def test_forged_token_flood_gets_429_after_the_budget(tmp_path: Path) -> None:
    data = copy.deepcopy(example_config_dict())
    # A slow refill so the test does not depend on how fast this machine sends 30 requests.
    data["auth"]["failure_budget"] = {"burst": 5, "per_second": 0.05}
    stack = start_stack(tmp_path, data)
    try:
        good = signed(stack)
        assert get(stack, good).status_code == 200  # verified once: cached
        attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = [signed(stack, key=attacker, sub=f"user-{i}") for i in range(30)]
        statuses = [get(stack, token).status_code for token in forged[:10]]
        assert statuses == [401] * 5 + [429] * 5
        locked = get(stack, forged[10])
        assert locked.status_code == 429
        assert 1 <= int(locked.headers["retry-after"]) <= 20
        assert locked.json()["error"] == "too_many_requests"
        assert "www-authenticate" not in locked.headers
        # Claiming another address does not buy a fresh budget: Envoy overwrites x-envoy-external-address
        # with the client address it trusts (and appends the peer to X-Forwarded-For).
        for i, token in enumerate(forged[11:21]):
            spoof = [("x-envoy-external-address", f"198.51.100.{i}"), ("x-forwarded-for", f"203.0.113.{i}"),
                     ("x-real-ip", f"192.0.2.{i}")]
            assert get(stack, token, extra=spoof).status_code == 429
        # Tokens already verified keep working; an unseen token, even a valid one, waits its turn.
        assert get(stack, good).status_code == 200
        assert get(stack, signed(stack, sub="carol")).status_code == 429
        # The refusals past the budget cost no verification: each is counted under its own reason.
        port = stack.data["services"]["ext_authz"]["metrics_port"]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'authz_checks_total{decision="deny",reason="failure_budget"} 17.0' in metrics
        assert 'authz_checks_total{decision="deny",reason="bad_signature"} 5.0' in metrics
    finally:
        stack.stop()
