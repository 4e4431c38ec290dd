"""ext_authz down → Envoy fails closed (403); back up → traffic flows without restarting Envoy."""

from __future__ import annotations

from tests.harness import Stack

PROFILE = "/api/v1/users/profile"


def test_fail_closed_and_recover(own_stack: Stack) -> None:
    headers = {"authorization": f"Bearer {own_stack.token()}"}
    assert own_stack.get(PROFILE, headers=headers).status_code == 200

    own_stack.procs["ext_authz"].kill()
    assert own_stack.get(PROFILE, headers=headers).status_code == 403
    # Public routes do not depend on the authorizer.
    assert own_stack.get("/api/v1/public/x").status_code == 200
    own_stack.wait_until(lambda: own_stack.get("/health/ready").status_code == 503, what="not ready")

    own_stack.procs["ext_authz"].start().wait_ready(30)
    own_stack.wait_until(lambda: own_stack.get(PROFILE, headers=headers).status_code == 200,
                         what="traffic to flow again")
    assert own_stack.procs["envoy"].running
