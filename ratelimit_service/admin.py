"""The ban admin API: `GET /v1/bans` lists the automatic bans in force, `DELETE /v1/bans/{ip}` lifts one.

Both act on the live store, so with Redis a ban lifted through one replica is lifted for every replica
and gateway sharing it (none caches a ban locally). Every call needs `Authorization: Bearer <token>`; the
token is read at each call (a rotated secret file or a changed environment needs no restart), and a
missing one refuses every call (503) instead of opening the API.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from outrider.token_api import TokenApiServer, TokenApiSettings, bearer_guard
from outrider.token_api import json_answer as _answer
from ratelimit_service.backends.base import Backend, BackendError
from ratelimit_service.keys import ban_key, banned_address, counter_base

log = logging.getLogger("ratelimit_service.admin")

BANS_PATH = "/v1/bans"


# Where the API listens and where its token comes from (services.ratelimit.admin_*).
AdminSettings = TokenApiSettings


@dataclass(frozen=True)
class BanView:
    """What the API needs of the live version: the store, the domain its bans are keyed under, and the
    service's hooks that keep rate_limit_banned_ips in step."""

    backend: Backend | None
    domain: str
    listed: Callable[[Sequence[tuple[str, int]]], None] = lambda _bans: None
    lifted: Callable[[str], None] = lambda _key: None


def address_key(domain: str, text: str) -> tuple[str, str]:
    """A client address as Envoy writes it in the remote_address descriptor (IPv6 compressed) and its ban
    key; ValueError when `text` is no IP address."""
    address = str(ipaddress.ip_address(text))
    return address, ban_key(counter_base(domain, (("remote_address", address),)))


def build_admin_app(settings: AdminSettings, view: Callable[[], BanView]) -> web.Application:
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

    guard = bearer_guard(settings, disabled_error="admin_disabled",
                         file_setting="services.ratelimit.admin_token_file", realm="outrider-ratelimit")
    app = web.Application(middlewares=[guard], client_max_size=1024)
    app.router.add_get(BANS_PATH, list_bans)
    app.router.add_delete(BANS_PATH + "/{ip}", unban)
    return app


class AdminServer(TokenApiServer):
    """The API's listener (with the memory store a call reaches one worker's bans only)."""

    def __init__(self, settings: AdminSettings, view: Callable[[], BanView]) -> None:
        super().__init__(settings, build_admin_app(settings, view), "ratelimit admin API")
