"""The cache purge webhook: `POST /v1/cache/purge` (bearer token) empties the entries of a path or a prefix.

It purges the live version's cache backend, so with Redis every gateway sharing it stops serving the
entries at once (their lookups read the same keys). The token is read at each call: a rotated secret file
or a changed environment needs no restart, and a missing one refuses every call instead of opening it.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ext_proc.cache import resource_key
from ext_proc.cache_backends import CacheBackend, CacheUnavailable

log = logging.getLogger("ext_proc.purge")

PURGE_PATH = "/v1/cache/purge"
MIN_TOKEN_CHARS = 16
MAX_BODY = 16 * 1024
MAX_TARGET_CHARS = 4096  # the design's URL limit


@dataclass(frozen=True)
class PurgeSettings:
    """Where the webhook listens and where its token comes from (services.ext_proc)."""

    address: str
    port: int
    token_env: str
    token_file: Path | None


@dataclass(frozen=True)
class CacheView:
    """What a purge needs of the live version: its backend and the key prefix its entries use."""

    backend: CacheBackend | None
    key_prefix: str


def load_token(settings: PurgeSettings) -> str | None:
    """The environment variable first, else the file; None when neither gives a token long enough."""
    token = os.environ.get(settings.token_env, "").strip()
    if not token and settings.token_file is not None:
        try:
            token = settings.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            log.warning("cache purge token file unreadable", extra={"path": str(settings.token_file),
                                                                      "error": str(exc)})
            return None
    return token if len(token) >= MIN_TOKEN_CHARS else None


def purge_target(doc: Any) -> tuple[str, str]:
    """{"path": p} or {"prefix": p} → ("path" | "prefix", p); ValueError says what is wrong."""
    if not isinstance(doc, dict) or len(doc) != 1 or next(iter(doc)) not in ("path", "prefix"):
        raise ValueError('the body is {"path": "/..."} or {"prefix": "/..."}')
    kind, value = next(iter(doc.items()))
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{kind} must be a string starting with '/'")
    if len(value) > MAX_TARGET_CHARS:
        raise ValueError(f"{kind} is longer than {MAX_TARGET_CHARS} characters")
    if "?" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        # Entries of a path are indexed without their query (every query of it is purged with it).
        raise ValueError(f"{kind} is a path without query string or control characters")
    return kind, value


def _answer(status: int, body: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, separators=(",", ":")),
                        content_type="application/json", headers=headers)


def build_purge_app(settings: PurgeSettings, cache: Callable[[], CacheView],
                    on_purge: Callable[[str], None] = lambda _kind: None) -> web.Application:
    async def purge(request: web.Request) -> web.Response:
        token = load_token(settings)
        if token is None:
            return _answer(503, {"error": "purge_disabled",
                                 "detail": f"no token: set {settings.token_env} or services.ext_proc.purge_token_file"
                                           f" ({MIN_TOKEN_CHARS}+ characters)"})
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            return _answer(401, {"error": "unauthorized"}, **{"WWW-Authenticate": 'Bearer realm="outrider-purge"'})
        if request.content_type != "application/json":
            return _answer(415, {"error": "unsupported_media_type", "detail": "the body is application/json"})
        try:
            kind, target = purge_target(json.loads(await request.read()))
        except (ValueError, UnicodeDecodeError) as exc:
            return _answer(400, {"error": "bad_request", "detail": str(exc)})
        view = cache()
        if view.backend is None:
            return _answer(409, {"error": "no_cache", "detail": "no cache rule is configured"})
        try:
            if kind == "path":
                count = await view.backend.invalidate(resource_key(view.key_prefix, target))
            else:
                count = await view.backend.invalidate_prefix(target)
        except CacheUnavailable as exc:
            log.warning("cache purge failed", extra={"error": str(exc)})
            return _answer(503, {"error": "cache_unavailable"})
        on_purge(kind)
        log.info("cache purged", extra={kind: target[:256], "purged": count})
        return _answer(200, {"purged": count, kind: target})

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(PURGE_PATH, purge)
    return app


class PurgeServer:
    """The webhook's listener, restarted only when its settings change between config versions."""

    def __init__(self, settings: PurgeSettings, cache: Callable[[], CacheView],
                 on_purge: Callable[[str], None] = lambda _kind: None) -> None:
        self.settings = settings
        self._app = build_purge_app(settings, cache, on_purge)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(self._app, access_log=None)
        await runner.setup()
        try:
            # Shared like the gRPC port by the service's workers (SO_REUSEPORT): a purge reaches one of them,
            # which is all of the cache with Redis (with the memory backend, that worker's entries only).
            await web.TCPSite(runner, self.settings.address, self.settings.port, reuse_port=True).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        if load_token(self.settings) is None:
            log.warning("cache purge webhook refuses every call: no token configured",
                        extra={"env": self.settings.token_env})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
