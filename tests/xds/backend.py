"""A test backend that names its own port: `python -m tests.xds.backend --port P`.

GET /_health answers 200 (or 503 after POST /_control {"healthy": false}); every other path answers
{"port": P} with the status set by POST /_control {"status": N}; {"hold_ms": N} (or `?hold_ms=N`)
delays every answer.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web


def build_app(port: int) -> web.Application:
    state = {"status": 200, "healthy": True, "hold_ms": 0}

    async def control(request: web.Request) -> web.Response:
        state.update(await request.json())
        return web.json_response(state)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"port": port}, status=200 if state["healthy"] else 503)

    async def answer(request: web.Request) -> web.Response:
        hold_ms = int(request.query.get("hold_ms", state["hold_ms"]))
        if hold_ms:
            await asyncio.sleep(hold_ms / 1000)
        return web.json_response({"port": port, "path": request.path}, status=int(state["status"]))

    app = web.Application()
    app.router.add_post("/_control", control)
    app.router.add_get("/_health", health)
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build_app(args.port), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
