"""ext_authz behind a real Envoy: 401/403/200, identity headers, public routes, path hardening."""

from __future__ import annotations

import pytest

from tests.harness import Stack

PROFILE = "/api/v1/users/profile"
IDENTITY = ("x-user-id", "x-user-email", "x-user-roles", "x-user-tier")
SPOOFED = {"x-user-id": "mallory", "x-user-email": "m@evil", "x-user-roles": "admin", "x-user-tier": "enterprise"}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_no_token_is_401_with_challenge_and_json_body(stack: Stack) -> None:
    response = stack.get(PROFILE)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == "unauthorized"
    assert body["request_id"]
    assert set(body) == {"error", "request_id"}


def test_request_id_is_the_clients_and_reaches_upstream(stack: Stack) -> None:
    denied = stack.get(PROFILE, headers={"x-request-id": "req-abc-123"})
    assert denied.json()["request_id"] == "req-abc-123"
    allowed = stack.get(PROFILE, headers={"x-request-id": "req-def-456", **bearer(stack.token())})
    assert allowed.json()["headers"]["x-request-id"] == "req-def-456"
    generated = stack.get(PROFILE)
    assert len(generated.json()["request_id"]) == 36  # Envoy's UUID when the client sent none


def test_bad_token_is_401_invalid_token(stack: Stack) -> None:
    response = stack.get(PROFILE, headers=bearer("not.a.jwt"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_user_token_reaches_upstream_with_identity(stack: Stack) -> None:
    response = stack.get(PROFILE, headers=bearer(stack.token("alice", ("user",), "premium", email="a@x.io")))
    assert response.status_code == 200
    seen = response.json()
    assert seen["path"] == PROFILE
    assert seen["headers"]["x-user-id"] == "alice"
    assert seen["headers"]["x-user-roles"] == "user"
    assert seen["headers"]["x-user-tier"] == "premium"
    assert seen["headers"]["x-user-email"] == "a@x.io"


def test_scheme_is_case_insensitive(stack: Stack) -> None:
    token = stack.token()
    assert stack.get(PROFILE, headers={"authorization": f"bEaReR {token}"}).status_code == 200


@pytest.mark.parametrize(("method", "roles", "status"), [
    ("DELETE", ("user",), 403),
    ("DELETE", ("admin",), 200),
    ("PUT", ("user",), 200),
    ("GET", ("guest",), 403),
    ("GET", (), 403),
])
def test_rbac_on_profile(stack: Stack, method: str, roles: tuple[str, ...], status: int) -> None:
    response = stack.request(method, PROFILE, headers=bearer(stack.token("bob", roles)))
    assert response.status_code == status
    if status == 403:
        assert response.json()["error"] == "forbidden"


def test_admin_routes_need_admin(stack: Stack) -> None:
    assert stack.get("/api/v1/admin/stats", headers=bearer(stack.token("u", ("user",)))).status_code == 403
    assert stack.get("/api/v1/admin/stats", headers=bearer(stack.token("root", ("admin",)))).status_code == 200


def test_public_route_needs_no_token(stack: Stack) -> None:
    response = stack.get("/api/v1/public/x")
    assert response.status_code == 200
    assert response.json()["path"] == "/api/v1/public/x"


def test_spoofed_identity_removed_on_public_route(stack: Stack) -> None:
    # Public routes skip the check, so they carry no identity at all, token or not.
    for headers in (dict(SPOOFED), {**SPOOFED, **bearer(stack.token("alice"))}):
        response = stack.get("/api/v1/public/x", headers=headers)
        assert response.status_code == 200
        assert not set(IDENTITY) & set(response.json()["headers"])


@pytest.mark.parametrize("path", [PROFILE, "/api/v1/messages/1", "/api/v1/files/a"])
def test_spoofed_identity_overwritten_on_protected_routes(stack: Stack, path: str) -> None:
    # The token has no email claim: a client-sent x-user-email must be removed, not passed through.
    response = stack.get(path, headers={**SPOOFED, **bearer(stack.token("alice"))})
    assert response.status_code == 200, response.text
    seen = response.json()["headers"]
    assert (seen["x-user-id"], seen["x-user-roles"], seen["x-user-tier"]) == ("alice", "user", "free")
    assert "x-user-email" not in seen


def test_spoofed_identity_on_denied_request_stays_denied(stack: Stack) -> None:
    assert stack.get("/api/v1/admin/x", headers=SPOOFED).status_code == 401


def test_health_endpoints_answered_by_gateway(stack: Stack) -> None:
    live = stack.get("/health/live")
    assert live.status_code == 200
    assert live.json() == {"status": "live"}
    assert stack.get("/health/ready").status_code == 200


def test_unknown_path_is_json_404(stack: Stack) -> None:
    response = stack.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found"}


def test_dot_segments_are_normalised_before_policy(stack: Stack) -> None:
    # /public/../users/profile must be judged as /users/profile, so it needs a token.
    response = stack.get("/api/v1/public/../users/profile")
    assert response.status_code == 401


def test_escaped_slashes_are_rejected(stack: Stack) -> None:
    assert stack.get("/api/v1/public%2F..%2Fusers/profile").status_code == 400


def test_empty_segments_are_refused(stack: Stack) -> None:
    # Not merged into another route's path: refused before routing (edge.non_canonical_paths: reject).
    response = stack.get("/api//v1//users/profile")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_path"


def test_metrics_and_decision_log_never_hold_the_token(stack: Stack) -> None:
    import json
    import time

    import httpx

    token = stack.token("logcheck")
    assert stack.get(PROFILE, headers=bearer(token)).status_code == 200
    assert stack.get(PROFILE).status_code == 401
    port = stack.data["services"]["ext_authz"]["metrics_port"]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'authz_checks_total{decision="allow",reason="allowed"}' in metrics
    assert 'authz_checks_total{decision="deny",reason="token_missing"}' in metrics
    assert "authz_check_duration_seconds_bucket" in metrics

    log_path = stack.workdir / "ext_authz.log"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and '"user_id":"logcheck"' not in log_path.read_text():
        time.sleep(0.05)  # decision lines are flushed in batches
    text = log_path.read_text()
    assert token not in text and token.split(".")[2] not in text
    decisions = [json.loads(line) for line in text.splitlines() if '"authz_decision"' in line]
    mine = [d for d in decisions if d.get("user_id") == "logcheck"]
    assert mine and mine[0]["decision"] == "allow" and mine[0]["request_id"]
    assert {"request_id", "decision", "reason", "user_id", "ts"} <= set(mine[0])
