"""The ban in the gRPC adapter: metrics, Retry-After, and requests refused from the local cache still counting."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from prometheus_client import CollectorRegistry

from outrider.process import free_port
from ratelimit_service.admin import AdminServer, AdminSettings, BanView
from ratelimit_service.backends.memory import MemoryBackend
from ratelimit_service.config import RateLimitsConfig
from ratelimit_service.guard import GuardedBackend
from ratelimit_service.limits import compile_table
from ratelimit_service.metrics import service_metrics
from ratelimit_service.service import RateLimitService, Settings
from tests.ratelimit.helpers import T0

Response = rls_pb2.RateLimitResponse


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> float:
        return self.ms / 1000


def service_of(after: int, rate: int, burst: int) -> tuple[RateLimitService, Clock, CollectorRegistry, MemoryBackend]:
    table = compile_table(RateLimitsConfig.model_validate({"per_ip": {
        "requests_per_unit": rate, "unit": "second", "burst": burst,
        "ban": {"after_requests": after, "window": "minute", "duration_s": 60}}}))
    registry, clock, backend = CollectorRegistry(), Clock(), MemoryBackend()
    metrics = service_metrics(registry)
    service = RateLimitService(Settings(table, local_cache_entries=1000), GuardedBackend(backend, 1.0, metrics=metrics),
                               clock=clock,
                               metrics=metrics)
    return service, clock, registry, backend


def from_ip(address: str = "10.0.0.1") -> rls_pb2.RateLimitRequest:
    out = rls_pb2.RateLimitRequest(domain="outrider")
    out.descriptors.add().entries.add(key="remote_address", value=address)
    return out


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_a_ban_is_counted_once_and_its_rejections_apart() -> None:
    service, clock, registry, _ = service_of(after=3, rate=1000, burst=1000)
    answers = [await service.decide(from_ip()) for _ in range(5)]
    assert [a.overall_code for a in answers] == [Response.OK] * 3 + [Response.OVER_LIMIT] * 2
    retry = {h.key: h.value for h in answers[3].response_headers_to_add}["Retry-After"]
    assert retry == "60"  # the whole ban is left
    row = {"domain": "outrider", "descriptor": "outrider.remote_address"}
    assert value(registry, "rate_limit_bans_total") == 1
    assert value(registry, "rate_limit_rejections_total", **row, reason="ban") == 2
    assert value(registry, "rate_limit_rejections_total", **row, reason="limit") == 0
    assert value(registry, "rate_limit_banned_ips") == 1
    clock.ms += 30_000
    later = await service.decide(from_ip())
    assert {h.key: h.value for h in later.response_headers_to_add}["Retry-After"] == "30"
    # Ended: the gauge follows at the next request; lifted (the admin API's hook): at once.
    clock.ms += 30_000
    assert (await service.decide(from_ip("10.0.0.2"))).overall_code == Response.OK
    assert value(registry, "rate_limit_banned_ips") == 0
    for _ in range(4):
        await service.decide(from_ip("10.0.0.2"))
    assert value(registry, "rate_limit_banned_ips") == 1
    service.ban_lifted(next(iter(service._bans_seen)))
    assert value(registry, "rate_limit_banned_ips") == 0


async def test_requests_refused_from_the_local_cache_still_count_toward_the_ban() -> None:
    # A bucket of 1 refilled once a second: after the first request every one is refused, most of them
    # from the local over-limit cache without a store call. The ban must see them all the same.
    service, clock, registry, _ = service_of(after=10, rate=1, burst=1)
    answers = [await service.decide(from_ip()) for _ in range(10)]
    assert value(registry, "rate_limit_local_cache_hits_total") >= 5
    assert value(registry, "rate_limit_bans_total") == 0
    clock.ms += 1000  # the bucket refilled: this request reaches the store with the held hits
    answers.append(await service.decide(from_ip()))
    assert value(registry, "rate_limit_bans_total") == 1
    assert answers[-1].overall_code == Response.OVER_LIMIT


async def test_the_admin_api_refuses_every_call_without_a_configured_token(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    service, _, _, backend = service_of(after=1, rate=1000, burst=1000)
    await service.decide(from_ip())
    await service.decide(from_ip())  # banned
    settings = AdminSettings("127.0.0.1", free_port(), "OUTRIDER_TEST_BAN_TOKEN", tmp_path / "missing")
    monkeypatch.delenv("OUTRIDER_TEST_BAN_TOKEN", raising=False)
    server = AdminServer(settings, lambda: BanView(backend, "outrider", service.bans_listed, service.ban_lifted))
    await server.start()
    url = f"http://127.0.0.1:{settings.port}/v1/bans"
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(url, headers={"authorization": "Bearer x"})).status_code == 503
            monkeypatch.setenv("OUTRIDER_TEST_BAN_TOKEN", "short")  # under 16 characters: still refused
            assert (await client.get(url, headers={"authorization": "Bearer short"})).status_code == 503
            token = "t" * 20  # read at each call: no restart
            monkeypatch.setenv("OUTRIDER_TEST_BAN_TOKEN", token)
            auth = {"authorization": f"Bearer {token}"}
            listed = (await client.get(url, headers=auth)).json()["bans"]
            assert [b["ip"] for b in listed] == ["10.0.0.1"]
            assert (await client.delete(url + "/10.0.0.1", headers=auth)).status_code == 200
            assert (await service.decide(from_ip())).overall_code == Response.OK
    finally:
        await server.close()
