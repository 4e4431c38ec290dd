"""The admin API's URL space: one item by name, 404 for an unknown one, the same for routes and clusters."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from xds_server.admin import build_admin_app
from xds_server.control import Outcome


class _Controller:
    """Only what the handlers read; the change pipeline itself is tested through a real Envoy."""

    version = 7

    def routes(self) -> dict[str, Any]:
        return {"version": "7", "routes": [{"name": "users", "match": {"prefix": "/u/"}}]}

    def clusters(self) -> dict[str, Any]:
        return {"version": "7", "clusters": [{"name": "demo", "endpoints": []}]}

    async def put_route(self, name: str, body: Any) -> Outcome:
        return Outcome(200, {"put": name, "body": body})

    async def delete_route(self, name: str) -> Outcome:
        return Outcome(200, {"deleted": name})

    put_cluster = put_route
    delete_cluster = delete_route


class _Cache:
    def status(self) -> dict[str, Any]:
        return {}


async def test_items_by_name() -> None:
    app = build_admin_app(_Controller(), _Cache())  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        route = await client.get("/v1/routes/users")
        assert route.status == 200
        assert await route.json() == {"version": "7", "route": {"name": "users", "match": {"prefix": "/u/"}}}
        cluster = await client.get("/v1/clusters/demo")
        assert (await cluster.json())["cluster"]["name"] == "demo"
        missing = await client.get("/v1/clusters/nope")
        assert missing.status == 404
        assert await missing.json() == {"error": "no cluster named 'nope'"}
        put = await client.put("/v1/routes/x", json={"a": 1})
        assert await put.json() == {"put": "x", "body": {"a": 1}}
        deleted = await client.delete("/v1/clusters/demo")
        assert await deleted.json() == {"deleted": "demo"}


TOKEN = "t" * 32


def _guarded() -> TestServer:
    from xds_server.admin_auth import guard

    return TestServer(build_admin_app(_Controller(), _Cache(), [guard(TOKEN, ["127.0.0.1", "localhost", "::1"])]))  # type: ignore[arg-type]


async def test_every_call_needs_the_token_an_allowed_host_and_json() -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with TestClient(_guarded()) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            refused = await client.get("/v1/status", headers=headers)
            assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await client.put("/v1/routes/x", json={}, headers=headers)).status == 401
        assert (await client.get("/v1/status", headers=auth)).status == 200
        # DNS rebinding: a page served as evil.example that resolves to 127.0.0.1 sends its own Host.
        rebound = await client.get("/v1/routes", headers={**auth, "Host": "evil.example:18001"})
        assert rebound.status == 403
        assert (await client.get("/v1/routes", headers={**auth, "Host": "localhost:18001"})).status == 200
        assert (await client.get("/v1/routes", headers={**auth, "Host": "[::1]:18001"})).status == 200
        # A cross-site "simple" request (text/plain, no preflight) cannot change anything.
        plain = await client.put("/v1/routes/x", data='{"a": 1}', headers={**auth, "Content-Type": "text/plain"})
        assert plain.status == 415
        ok = await client.put("/v1/routes/x", json={"a": 1}, headers=auth)
        assert ok.status == 200


def test_the_admin_token_comes_from_the_environment_or_a_file(tmp_path: Any, monkeypatch: Any) -> None:
    import pytest

    from outrider.config.xds import XdsService
    from xds_server.admin_auth import AdminTokenMissing, admin_token

    monkeypatch.delenv("OUTRIDER_ADMIN_TOKEN", raising=False)
    with pytest.raises(AdminTokenMissing, match="needs a token"):
        admin_token(XdsService(), tmp_path)
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert admin_token(XdsService(admin_token_file="token"), tmp_path) == TOKEN
    (tmp_path / "short").write_text("abc")
    with pytest.raises(AdminTokenMissing, match="shorter than 16"):
        admin_token(XdsService(admin_token_file="short"), tmp_path)
    monkeypatch.setenv("OUTRIDER_ADMIN_TOKEN", "e" * 20)
    assert admin_token(XdsService(admin_token_file="token"), tmp_path) == "e" * 20


async def test_the_admin_api_can_listen_on_a_unix_socket_only_its_user_may_open(tmp_path: Any) -> None:
    import asyncio
    import stat

    import httpx

    from xds_server.admin import start_admin
    from xds_server.admin_auth import guard

    socket_path = tmp_path / "admin.sock"
    app = build_admin_app(_Controller(), _Cache(), [guard(TOKEN, ["127.0.0.1"])])  # type: ignore[arg-type]
    runner = await start_admin(app, "127.0.0.1", 1, socket_path)
    try:
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600

        def call() -> int:
            transport = httpx.HTTPTransport(uds=str(socket_path))
            with httpx.Client(transport=transport, base_url="http://admin") as client:
                return client.get("/v1/routes", headers={"Authorization": f"Bearer {TOKEN}"}).status_code

        assert await asyncio.to_thread(call) == 200  # no Host check on a socket: its mode says who may call
    finally:
        await runner.cleanup()
