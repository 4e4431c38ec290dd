"""Who may call the admin API: a bearer token (constant-time compare), an allowed Host, JSON bodies only.

The admin API changes what the gateway lets through, so every call needs the operator's token; the Host
check stops DNS rebinding (a browser page whose name now points at 127.0.0.1 would otherwise reach a
loopback API), and JSON-only bodies stop cross-site "simple" requests (text/plain needs no CORS preflight).
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from outrider.config.xds import XdsService

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON_TYPES = frozenset({"application/json"})
MIN_TOKEN_CHARS = 16


class AdminTokenMissing(RuntimeError):
    pass


def admin_token(settings: XdsService, config_dir: Path) -> str:
    """The configured token: the environment variable first, else the token file. Raises AdminTokenMissing."""
    token = os.environ.get(settings.admin_token_env, "").strip()
    where = f"environment variable {settings.admin_token_env}"
    if not token and settings.admin_token_file is not None:
        path = settings.admin_token_file
        path = path if path.is_absolute() else config_dir / path
        where = str(path)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AdminTokenMissing(f"services.xds.admin_token_file: cannot read {path}: {exc}") from None
    if not token:
        raise AdminTokenMissing(
            f"the admin API needs a token: set {settings.admin_token_env} or services.xds.admin_token_file")
    if len(token) < MIN_TOKEN_CHARS:
        raise AdminTokenMissing(f"the admin token from {where} is shorter than {MIN_TOKEN_CHARS} characters")
    return token


def _host_of(header: str) -> str:
    """'localhost:18001' → 'localhost', '[::1]:18001' → '::1'."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json",
                        headers=headers)


def guard(token: str, allowed_hosts: Iterable[str]) -> Middleware:
    """aiohttp middleware enforcing the three rules on every admin call."""
    expected = f"Bearer {token}".encode()
    hosts = frozenset(h.lower() for h in allowed_hosts)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A Unix socket has no Host to check (its file permissions say who may connect); over TCP the Host
        # must be one of ours.
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        if isinstance(peer, tuple):
            host = _host_of(request.headers.get("Host", "")).lower()
            if host not in hosts:
                return _error(403, "host not allowed")
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return _error(401, "missing or wrong admin token", **{"WWW-Authenticate": 'Bearer realm="outrider-admin"'})
        if request.method in ("PUT", "POST", "PATCH") and request.content_type not in JSON_TYPES:
            return _error(415, "the body must be application/json")
        return await handler(request)

    return middleware
