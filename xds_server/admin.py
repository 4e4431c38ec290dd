"""Admin HTTP API of the control plane (JSON in and out): routes, clusters, status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

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


def _add_collection(
    app: web.Application,
    plural: str,
    singular: str,
    listing: Callable[[], dict[str, Any]],
    put: Callable[[str, Any], Awaitable[Outcome]],
    delete: Callable[[str], Awaitable[Outcome]],
    version: Callable[[], int],
) -> None:
    """GET /v1/{plural}[/{name}], PUT and DELETE /v1/{plural}/{name}: routes and clusters alike."""

    async def get_all(request: web.Request) -> web.Response:
        return _json(200, listing())

    async def get_one(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = next((item for item in listing()[plural] if item["name"] == name), None)
        if found is None:
            return _json(404, {"error": f"no {singular} named {name!r}"})
        return _json(200, {"version": str(version()), singular: found})

    async def put_one(request: web.Request) -> web.Response:
        return _answer(await put(request.match_info["name"], await _body(request)))

    async def delete_one(request: web.Request) -> web.Response:
        return _answer(await delete(request.match_info["name"]))

    app.router.add_get(f"/v1/{plural}", get_all)
    app.router.add_get(f"/v1/{plural}/{{name}}", get_one)
    app.router.add_put(f"/v1/{plural}/{{name}}", put_one)
    app.router.add_delete(f"/v1/{plural}/{{name}}", delete_one)


def build_admin_app(controller: Controller, cache: SnapshotCache,
                    middlewares: Sequence[Middleware] = ()) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=list(middlewares))

    def version() -> int:
        return controller.version

    _add_collection(app, "routes", "route", controller.routes, controller.put_route, controller.delete_route,
                    version)
    _add_collection(app, "clusters", "cluster", controller.clusters, controller.put_cluster,
                    controller.delete_cluster, version)

    async def status(request: web.Request) -> web.Response:
        return _json(200, {"version": str(controller.version), "nodes": cache.status()})

    app.router.add_get("/v1/status", status)
    return app


async def start_admin(app: web.Application, address: str, port: int, socket_path: Path | None = None) -> web.AppRunner:
    """Serve on address:port, or on a Unix socket (mode 0600: only this user) when socket_path is given."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if socket_path is not None:
        await asyncio.to_thread(socket_path.unlink, missing_ok=True)  # a stale socket of a previous run
        await web.UnixSite(runner, str(socket_path)).start()
        await asyncio.to_thread(socket_path.chmod, 0o600)
    else:
        await web.TCPSite(runner, address, port).start()
    return runner
