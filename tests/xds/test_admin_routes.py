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
