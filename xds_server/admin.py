"""Admin HTTP API of the control plane (JSON in and out): routes, clusters, status."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from xds_server.cache import SnapshotCache
from xds_server.control import Controller, Outcome

MAX_BODY = 1024 * 1024


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def _answer(outcome: Outcome) -> web.Response:
    return _json(outcome.status, outcome.body)


async def _body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"null")
    except ValueError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"invalid JSON: {exc}"}), content_type="application/json"
        ) from None


def build_admin_app(controller: Controller, cache: SnapshotCache) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)

    async def get_routes(request: web.Request) -> web.Response:
        return _json(200, controller.routes())

    async def get_route(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = next((r for r in controller.routes()["routes"] if r["name"] == name), None)
        if found is None:
            return _json(404, {"error": f"no route named {name!r}"})
        return _json(200, {"version": str(controller.version), "route": found})

    async def put_route(request: web.Request) -> web.Response:
        return _answer(await controller.put_route(request.match_info["name"], await _body(request)))

    async def delete_route(request: web.Request) -> web.Response:
        return _answer(await controller.delete_route(request.match_info["name"]))

    async def get_clusters(request: web.Request) -> web.Response:
        return _json(200, controller.clusters())

    async def get_cluster(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = next((c for c in controller.clusters()["clusters"] if c["name"] == name), None)
        if found is None:
            return _json(404, {"error": f"no cluster named {name!r}"})
        return _json(200, {"version": str(controller.version), "cluster": found})

    async def put_cluster(request: web.Request) -> web.Response:
        return _answer(await controller.put_cluster(request.match_info["name"], await _body(request)))

    async def delete_cluster(request: web.Request) -> web.Response:
        return _answer(await controller.delete_cluster(request.match_info["name"]))

    async def status(request: web.Request) -> web.Response:
        return _json(200, {"version": str(controller.version), "nodes": cache.status()})

    app.router.add_get("/v1/routes", get_routes)
    app.router.add_get("/v1/routes/{name}", get_route)
    app.router.add_put("/v1/routes/{name}", put_route)
    app.router.add_delete("/v1/routes/{name}", delete_route)
    app.router.add_get("/v1/clusters", get_clusters)
    app.router.add_get("/v1/clusters/{name}", get_cluster)
    app.router.add_put("/v1/clusters/{name}", put_cluster)
    app.router.add_delete("/v1/clusters/{name}", delete_cluster)
    app.router.add_get("/v1/status", status)
    return app


async def start_admin(app: web.Application, address: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner
