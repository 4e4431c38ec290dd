"""A restarted stack serves exactly the file plus the accepted API changes: same upstream headers, same routes.

The regression this guards: the second `make run` forwarded the bearer token to the upstream, because the
persisted state did not round-trip (routes with their own transformations lost the global ones).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import start_stack
from tests.harness import Stack, example_config_dict
from tests.xds.conftest import xds_admin

# Upstream headers that differ on every request by design.
VARYING = {"x-request-id"}
PATHS = ("/api/v1/users/me", "/api/v1/messages/inbox", "/api/v1/public/x", "/api/v1/added/x")
ADDED_ROUTE = {
    "match": {"prefix": "/api/v1/added/"},
    "upstream": "demo",
    "resource": "profile",
    "transformations": {"request": {"add_headers": {"X-Added": "yes"}}},
}


@pytest.fixture
def full_stack(tmp_path: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path, example_config_dict())  # the example: Envoy on ADS, every service
    yield running
    running.stop()


def _seen(stack: Stack, token: str) -> dict[str, Any]:
    out = {}
    for path in PATHS:
        response = stack.get(path, headers={"Authorization": f"Bearer {token}"})
        echo = response.json() if response.status_code == 200 else {}
        headers = {k: v for k, v in echo.get("headers", {}).items() if k not in VARYING}
        out[path] = (response.status_code, headers, echo.get("query"))
    return out


def _routes_dump(stack: Stack) -> Any:
    dump = httpx.get(f"{stack.admin_url}/config_dump?resource=dynamic_route_configs", timeout=5).json()
    return [c["route_config"] for c in dump["configs"]]


def _restart(stack: Stack) -> None:
    stack.stop()
    stack.procs.clear()
    stack.start()


def test_plain_restart_and_restart_after_api_change_serve_the_same(full_stack: Stack) -> None:
    token = full_stack.token(sub="alice", roles=("user",))
    first = _seen(full_stack, token)
    assert first["/api/v1/users/me"][0] == 200
    for path in ("/api/v1/users/me", "/api/v1/messages/inbox"):
        headers = first[path][1]
        assert "authorization" not in headers, f"{path}: the bearer token reached the upstream"
        assert headers.get("x-gateway-version") == "1.0", path
    routes_before = _routes_dump(full_stack)

    _restart(full_stack)  # a plain restart: the state written on the first start is served
    assert _seen(full_stack, token) == first
    assert _routes_dump(full_stack) == routes_before

    with xds_admin(full_stack) as admin:
        put = admin.put("/v1/routes/added", json=ADDED_ROUTE)
        assert put.status_code == 200, put.text
    changed = _seen(full_stack, token)
    assert changed["/api/v1/added/x"][0] == 200
    assert changed["/api/v1/added/x"][1]["x-added"] == "yes"
    assert "authorization" not in changed["/api/v1/added/x"][1]
    routes_changed = _routes_dump(full_stack)

    _restart(full_stack)  # after an API change: the file plus the change, nothing more, nothing less
    assert _seen(full_stack, token) == changed
    assert _routes_dump(full_stack) == routes_changed
    with xds_admin(full_stack) as admin:
        listed = {r["name"]: r for r in admin.get("/v1/routes").json()["routes"]}
    assert listed["added"] == {"name": "added", **ADDED_ROUTE}  # listed as given
