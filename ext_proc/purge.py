"""The cache purge webhook: `POST /v1/cache/purge` (bearer token) empties the entries of a path or a prefix.

It purges the live version's cache backend, so with Redis every gateway sharing it stops serving the
entries at once (their lookups read the same keys). The token is read at each call: a rotated secret file
or a changed environment needs no restart, and a missing one refuses every call instead of opening it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ext_proc.cache import resource_key
from ext_proc.cache_backends import CacheBackend, CacheUnavailable
from outrider.token_api import TokenApiServer, TokenApiSettings, bearer_guard
from outrider.token_api import json_answer as _answer

log = logging.getLogger("ext_proc.purge")

PURGE_PATH = "/v1/cache/purge"
MAX_BODY = 16 * 1024
MAX_TARGET_CHARS = 4096  # the design's URL limit


# Where the webhook listens and where its token comes from (services.ext_proc).
PurgeSettings = TokenApiSettings


@dataclass(frozen=True)
class CacheView:
    """What a purge needs of the live version: its backend and the key prefix its entries use."""

    backend: CacheBackend | None
    key_prefix: str


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


def build_purge_app(settings: PurgeSettings, cache: Callable[[], CacheView],
                    on_purge: Callable[[str], None] = lambda _kind: None) -> web.Application:
    async def purge(request: web.Request) -> web.Response:
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

    guard = bearer_guard(settings, disabled_error="purge_disabled", file_setting="services.ext_proc.purge_token_file",
                         realm="outrider-purge")
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app.router.add_post(PURGE_PATH, purge)
    return app


class PurgeServer(TokenApiServer):
    """The webhook's listener (with the memory backend a purge reaches one worker's entries only)."""

    def __init__(self, settings: PurgeSettings, cache: Callable[[], CacheView],
                 on_purge: Callable[[str], None] = lambda _kind: None) -> None:
        super().__init__(settings, build_purge_app(settings, cache, on_purge), "cache purge webhook")
