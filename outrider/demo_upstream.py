"""The demo upstream: answers every request with JSON describing what it received."""

from __future__ import annotations

import argparse
import json
from typing import Any

from aiohttp import web


def describe_request(method: str, path: str, query: dict[str, Any], headers: dict[str, str],
                     content_type: str, body: bytes, raw_path: str | None = None) -> dict[str, Any]:
    """The echo document: method, path (decoded), raw_path (the request target as received), query, headers,
    json (parsed body) or body (raw text)."""
    text = body.decode("utf-8", errors="replace")
    parsed: Any = None
    if body and "json" in content_type.lower():
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
    return {
        "method": method,
        "path": path,
        "raw_path": path if raw_path is None else raw_path,
        "query": query,
        "headers": headers,
        "json": parsed,
        "body": None if parsed is not None else text,
    }


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    query: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        query[key] = values[0] if len(values) == 1 else values
    headers = {k.lower(): v for k, v in request.headers.items()}
    doc = describe_request(request.method, request.path, query, headers,
                           request.headers.get("content-type", ""), body, request.raw_path)
    return web.json_response(doc)


def build_app() -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="outrider-demo-upstream", description=__doc__)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
        pass
    web.run_app(build_app(), host=args.address, port=args.port, print=None, access_log=None,
                handle_signals=True, shutdown_timeout=2.0)


if __name__ == "__main__":
    main()
