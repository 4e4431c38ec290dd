"""A service's small operator HTTP API behind a bearer token: where it listens, its token, the guard, the listener.

Used by ext_proc's cache purge webhook and ratelimit_service's ban API. The token is read at each call (a rotated
secret file or a changed environment needs no restart), and a missing or short one refuses every call (503)
instead of opening the API.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

log = logging.getLogger("outrider.token_api")

MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class TokenApiSettings:
    """Where the API listens and where its token comes from."""

    address: str
    port: int
    token_env: str
    token_file: Path | None


def load_token(settings: TokenApiSettings) -> str | None:
    """The environment variable first, else the file; None when neither gives a token long enough."""
    token = os.environ.get(settings.token_env, "").strip()
    if not token and settings.token_file is not None:
        try:
            token = settings.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            log.warning("API token file unreadable", extra={"path": str(settings.token_file), "error": str(exc)})
            return None
    return token if len(token) >= MIN_TOKEN_CHARS else None


def json_answer(status: int, body: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, separators=(",", ":")),
                        content_type="application/json", headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_guard(settings: TokenApiSettings, *, disabled_error: str, file_setting: str, realm: str) -> Middleware:
    """Middleware: 503 `disabled_error` while no token is configured, 401 unless `Authorization: Bearer <token>`
    (compared in constant time)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = load_token(settings)
        if token is None:
            return json_answer(503, {"error": disabled_error,
                                     "detail": f"no token: set {settings.token_env} or {file_setting}"
                                               f" ({MIN_TOKEN_CHARS}+ characters)"})
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            return json_answer(401, {"error": "unauthorized"}, **{"WWW-Authenticate": f'Bearer realm="{realm}"'})
        return await handler(request)

    return guard


class TokenApiServer:
    """The API's listener, restarted by its owner only when its settings change between config versions."""

    def __init__(self, settings: TokenApiSettings, app: web.Application, what: str) -> None:
        self.settings = settings
        self._app = app
        self.what = what
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(self._app, access_log=None)
        await runner.setup()
        try:
            # Shared like the gRPC port by the service's workers (SO_REUSEPORT): a call reaches one of them,
            # which sees all of the shared state with Redis (with memory stores, that worker's only).
            await web.TCPSite(runner, self.settings.address, self.settings.port, reuse_port=True).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        if load_token(self.settings) is None:
            log.warning(f"{self.what} refuses every call: no token configured",
                        extra={"env": self.settings.token_env})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class TokenApiSlot:
    """The one listener of a service's token API, kept in step with the settings of each config version."""

    def __init__(self, make: Callable[[TokenApiSettings], TokenApiServer]) -> None:
        self._make = make
        self.server: TokenApiServer | None = None

    async def apply(self, settings: TokenApiSettings | None) -> None:
        """Start, move or stop the listener when its settings change."""
        if self.server is not None and self.server.settings == settings:
            return
        await self.close()
        if settings is None:
            return
        server = self._make(settings)
        try:
            await server.start()
        except OSError as exc:
            # An operator's tool: a port taken (another gateway on this host) must not refuse the version that
            # serves traffic. Tried again with the next version.
            log.error(f"{server.what} cannot listen", extra={"address": settings.address, "port": settings.port,
                                                              "error": str(exc)})
            return
        self.server = server
        log.info(f"{server.what} listening", extra={"address": settings.address, "port": settings.port})

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None
