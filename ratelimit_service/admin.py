"""The ban admin API: `GET /v1/bans` lists the automatic bans in force, `DELETE /v1/bans/{ip}` lifts one.

Both act on the live store, so with Redis a ban lifted through one replica is lifted for every replica
and gateway sharing it (none caches a ban locally). Every call needs `Authorization: Bearer <token>`; the
token is read at each call (a rotated secret file or a changed environment needs no restart), and a
missing one refuses every call (503) instead of opening the API.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ratelimit_service.backends.base import Backend, BackendError
from ratelimit_service.keys import ban_key, banned_address, counter_base

log = logging.getLogger("ratelimit_service.admin")

BANS_PATH = "/v1/bans"
MIN_TOKEN_CHARS = 16
REALM = 'Bearer realm="outrider-ratelimit"'


@dataclass(frozen=True)
class AdminSettings:
    """Where the API listens and where its token comes from (services.ratelimit.admin_*)."""

    address: str
    port: int
    token_env: str
    token_file: Path | None


@dataclass(frozen=True)
class BanView:
    """What the API needs of the live version: the store, the domain its bans are keyed under, and the
    service's hooks that keep rate_limit_banned_ips in step."""

    backend: Backend | None
    domain: str
    listed: Callable[[Sequence[tuple[str, int]]], None] = lambda _bans: None
    lifted: Callable[[str], None] = lambda _key: None


def load_token(settings: AdminSettings) -> str | None:
    """The environment variable first, else the file; None when neither gives a token long enough."""
    token = os.environ.get(settings.token_env, "").strip()
    if not token and settings.token_file is not None:
        try:
            token = settings.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            log.warning("ratelimit admin token file unreadable", extra={"path": str(settings.token_file),
                                                                          "error": str(exc)})
            return None
    return token if len(token) >= MIN_TOKEN_CHARS else None


def address_key(domain: str, text: str) -> tuple[str, str]:
    """A client address as Envoy writes it in the remote_address descriptor (IPv6 compressed) and its ban
    key; ValueError when `text` is no IP address."""
    address = str(ipaddress.ip_address(text))
    return address, ban_key(counter_base(domain, (("remote_address", address),)))


def _answer(status: int, body: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, separators=(",", ":")),
                        content_type="application/json", headers=headers)


def build_admin_app(settings: AdminSettings, view: Callable[[], BanView]) -> web.Application:
    @web.middleware
    async def authorized(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        token = load_token(settings)
        if token is None:
            return _answer(503, {"error": "admin_disabled",
                                 "detail": f"no token: set {settings.token_env} or services.ratelimit.admin_token_file"
                                           f" ({MIN_TOKEN_CHARS}+ characters)"})
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            return _answer(401, {"error": "unauthorized"}, **{"WWW-Authenticate": REALM})
        response: web.StreamResponse = await handler(request)
        return response

    async def list_bans(_request: web.Request) -> web.Response:
        live = view()
        if live.backend is None:
            return _answer(200, {"bans": []})
        try:
            found = await live.backend.bans(live.domain)
        except BackendError as exc:
            log.warning("listing bans failed", extra={"error": str(exc)})
            return _answer(503, {"error": "store_unavailable"})
        bans = [(key, left) for key, left in found if banned_address(key, live.domain) is not None]
        live.listed(bans)
        body = [{"ip": banned_address(key, live.domain), "remaining_s": -(-left // 1000)} for key, left in bans]
        return _answer(200, {"bans": sorted(body, key=lambda b: str(b["ip"]))})

    async def unban(request: web.Request) -> web.Response:
        live = view()
        try:
            address, key = address_key(live.domain, request.match_info["ip"])
        except ValueError:
            return _answer(400, {"error": "bad_request", "detail": "not an IP address"})
        if live.backend is None:
            return _answer(404, {"error": "not_banned", "ip": address})
        try:
            lifted = await live.backend.unban(live.domain, key)
        except BackendError as exc:
            log.warning("lifting a ban failed", extra={"error": str(exc)})
            return _answer(503, {"error": "store_unavailable"})
        if not lifted:
            return _answer(404, {"error": "not_banned", "ip": address})
        live.lifted(key)
        log.info("ban lifted", extra={"client_ip": address})
        return _answer(200, {"unbanned": address})

    app = web.Application(middlewares=[authorized], client_max_size=1024)
    app.router.add_get(BANS_PATH, list_bans)
    app.router.add_delete(BANS_PATH + "/{ip}", unban)
    return app


class AdminServer:
    """The API's listener, restarted only when its settings change between config versions."""

    def __init__(self, settings: AdminSettings, view: Callable[[], BanView]) -> None:
        self.settings = settings
        self._app = build_admin_app(settings, view)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(self._app, access_log=None)
        await runner.setup()
        try:
            # Shared by the service's workers (SO_REUSEPORT): a call reaches one of them, which is every ban
            # with Redis (with the memory store, that worker's bans only).
            await web.TCPSite(runner, self.settings.address, self.settings.port, reuse_port=True).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        if load_token(self.settings) is None:
            log.warning("ratelimit admin API refuses every call: no token configured",
                        extra={"env": self.settings.token_env})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
