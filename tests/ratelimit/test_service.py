"""The gRPC adapter: RLS responses, headers and body, hits_addend, failure modes, metrics — over real gRPC."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client import REGISTRY

from outrider.process import free_port
from ratelimit_service.algorithms import Outcome
from ratelimit_service.backends.base import Backend, BackendError, Check
from ratelimit_service.backends.memory import MemoryBackend
from ratelimit_service.guard import GuardedBackend
from ratelimit_service.service import RateLimitService, Settings, add_to_server
from tests.ratelimit.helpers import rls_request, table_of

Response = rls_pb2.RateLimitResponse
LIMITS = """
domain: svc
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: ip
    rate_limit: {unit: second, requests_per_unit: 10, burst: 20, algorithm: token_bucket}
  - key: ldap
    rate_limit: {unlimited: true}
  - key: soft
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
"""


def request(*descriptors: tuple[tuple[str, str], ...], hits: int = 0, domain: str = "svc") -> rls_pb2.RateLimitRequest:
    return rls_request(*descriptors, domain=domain, hits=hits)


def headers(response: rls_pb2.RateLimitResponse) -> dict[str, str]:
    return {h.key: h.value for h in response.response_headers_to_add}


class Hanging:
    """A store that never answers (a stopped Redis)."""

    async def evaluate(self, tag: str, checks: Sequence[Check], now_ms: int, charge: int = 0) -> list[Outcome]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def close(self) -> None: ...


class Broken:
    calls = 0

    async def evaluate(self, tag: str, checks: Sequence[Check], now_ms: int, charge: int = 0) -> list[Outcome]:
        self.calls += 1
        raise BackendError("connection refused")

    async def close(self) -> None: ...


async def serve(backend: Backend, deny: bool = False, budget_s: float = 0.02,
                clock: float | None = None) -> tuple[grpc.aio.Server, int, RateLimitService]:
    service = RateLimitService(Settings(table_of(LIMITS), failure_mode_deny=deny),
                               GuardedBackend(backend, budget_s),
                               **({"clock": lambda: clock} if clock is not None else {}))
    server = grpc.aio.server()
    add_to_server(service, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    await server.start()
    return server, port, service


@pytest.fixture
async def stub() -> AsyncIterator[rls_pb2_grpc.RateLimitServiceStub]:
    server, port, _ = await serve(MemoryBackend(), clock=1_800_000_010.0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield rls_pb2_grpc.RateLimitServiceStub(channel)
    await server.stop(None)


async def test_statuses_carry_limit_remaining_and_reset(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    response = await stub.ShouldRateLimit(request(
        (("user", "alice"),), (("ip", "1.2.3.4"),), (("ldap", "x"),), (("nothing", "here"),)), timeout=5)
    assert response.overall_code == Response.OK
    user, ip, ldap, unmatched = response.statuses
    assert (user.code, user.current_limit.requests_per_unit, user.current_limit.unit) == (
        Response.OK, 3, Response.RateLimit.MINUTE)
    assert user.limit_remaining == 2
    assert user.duration_until_reset.seconds == 50  # the clock is 10 s into its minute
    assert (ip.limit_remaining, ip.current_limit.unit) == (19, Response.RateLimit.SECOND)
    assert ldap.limit_remaining == 4_294_967_295 and not ldap.HasField("current_limit")
    assert unmatched.code == Response.OK and not unmatched.HasField("current_limit")
    # Headers describe the binding limit: the user's (2 left) rather than the address's (19 left).
    assert headers(response) == {"RateLimit-Limit": "3", "RateLimit-Remaining": "2", "RateLimit-Reset": "50"}
    assert not response.raw_body


async def test_over_limit_has_retry_after_and_a_json_body(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    for _ in range(3):
        assert (await stub.ShouldRateLimit(request((("user", "bob"),)))).overall_code == Response.OK
    response = await stub.ShouldRateLimit(request((("user", "bob"),)))
    assert response.overall_code == Response.OVER_LIMIT
    assert response.statuses[0].code == Response.OVER_LIMIT
    assert headers(response) == {"RateLimit-Limit": "3", "RateLimit-Remaining": "0", "RateLimit-Reset": "50",
                                 "Retry-After": "50", "content-type": "application/json"}
    assert json.loads(response.raw_body) == {"error": "rate_limited", "message": "Too many requests; retry later.",
                                             "retry_after": 50}


async def test_hits_addend_is_honoured(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    response = await stub.ShouldRateLimit(request((("user", "carol"),), hits=2))
    assert response.statuses[0].limit_remaining == 1
    assert (await stub.ShouldRateLimit(request((("user", "carol"),), hits=2))).overall_code == Response.OVER_LIMIT
    # A descriptor's own hits_addend wins over the request's (5 would be over a limit of 3 at once).
    one = request((("user", "carol2"),), hits=5)
    one.descriptors[0].hits_addend.value = 1
    assert (await stub.ShouldRateLimit(one)).overall_code == Response.OK


async def test_shadow_mode_answers_ok_and_is_counted(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    def shadow() -> float:
        return REGISTRY.get_sample_value("rate_limit_shadow_total",
                                         {"domain": "svc", "descriptor": "svc.soft"}) or 0.0

    before = shadow()
    for _ in range(3):
        assert (await stub.ShouldRateLimit(request((("soft", "x"),)))).overall_code == Response.OK
    assert shadow() - before == 2


async def test_hits_and_rejections_are_counted_per_descriptor(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    labels = {"domain": "svc", "descriptor": "svc.user"}

    def sample(name: str, **more: str) -> float:
        return REGISTRY.get_sample_value(name, {**labels, **more}) or 0.0

    hits, rejections = sample("rate_limit_hits_total"), sample("rate_limit_rejections_total", reason="limit")
    for _ in range(5):
        await stub.ShouldRateLimit(request((("user", "dave"),)))
    assert sample("rate_limit_hits_total") - hits == 5
    assert sample("rate_limit_rejections_total", reason="limit") - rejections == 2
    assert sample("rate_limit_rejections_total", reason="ban") == 0  # no ban configured


@pytest.mark.parametrize("store", [Hanging, Broken])
async def test_a_failing_store_answers_in_the_allow_mode(store: type) -> None:
    failures = REGISTRY.get_sample_value("rate_limit_failure_mode_total", {"mode": "allow"}) or 0.0
    server, port, _ = await serve(store())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        for _ in range(3):
            # The deadline is 50x the budget: the service must answer, not Envoy's timeout.
            response = await stub.ShouldRateLimit(request((("user", "erin"),)), timeout=1.0)
            assert response.overall_code == Response.OK
            assert not response.response_headers_to_add
    await server.stop(None)
    assert (REGISTRY.get_sample_value("rate_limit_failure_mode_total", {"mode": "allow"}) or 0) - failures == 3


async def test_deny_mode_refuses_with_a_body_when_the_store_fails() -> None:
    server, port, _ = await serve(Broken(), deny=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(
            request((("user", "frank"),)), timeout=1.0)
    await server.stop(None)
    assert response.overall_code == Response.OVER_LIMIT
    assert headers(response)["Retry-After"] == "1"
    assert json.loads(response.raw_body)["error"] == "rate_limited"


async def test_the_breaker_spares_a_down_store_and_probes_it_again() -> None:
    now = [0.0]
    broken = Broken()
    guard = GuardedBackend(broken, 0.02, clock=lambda: now[0], min_backoff_s=1.0)
    check = [Check(("k",), 1, 10, 60_000, 1, 0, False)]
    assert await guard.evaluate("d", check, 0) is None
    assert await guard.evaluate("d", check, 0) is None
    assert broken.calls == 1  # the second request did not touch the store
    now[0] = 1.5
    assert await guard.evaluate("d", check, 0) is None
    assert broken.calls == 2  # probed after the backoff
    guard.backend = MemoryBackend()
    now[0] = 10.0
    assert await guard.evaluate("d", check, 0) == [(False, 9, 60_000)]
    assert guard.healthy


async def test_counters_over_their_limit_are_answered_locally() -> None:
    memory = MemoryBackend()
    calls = []

    class Counting:
        async def evaluate(self, tag: str, checks: Sequence[Check], now_ms: int, charge: int = 0) -> list[Outcome]:
            calls.append(now_ms)
            return await memory.evaluate(tag, checks, now_ms, charge)

        async def close(self) -> None: ...

    clock = [1_800_000_010.0]
    service = RateLimitService(Settings(table_of(LIMITS), local_cache_entries=1000),
                               GuardedBackend(Counting(), 1.0), clock=lambda: clock[0])
    for _ in range(6):
        await service.decide(request((("user", "gina"),)))
    assert len(calls) == 4  # 3 admitted, 1 refused by the store, then 2 refused from memory
    local = await service.decide(request((("user", "gina"),)))
    assert local.overall_code == Response.OVER_LIMIT and headers(local)["Retry-After"] == "50"
    clock[0] += 50  # the window resets: back to the store
    assert (await service.decide(request((("user", "gina"),)))).overall_code == Response.OK
    assert len(calls) == 5


async def test_an_internal_error_answers_in_the_failure_mode() -> None:
    server, port, service = await serve(MemoryBackend())
    service.settings = None  # type: ignore[assignment]  # any bug inside decide()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(
            request((("user", "x"),)), timeout=1.0)
    await server.stop(None)
    assert response.overall_code == Response.OK


def test_descriptor_proto_fields_used_exist() -> None:
    d = ratelimit_pb2.RateLimitDescriptor()
    assert hasattr(d, "hits_addend") and hasattr(d, "limit")


async def test_refusals_are_logged_one_json_line_each() -> None:
    import io

    from outrider.logs import DecisionLog

    stream = io.StringIO()
    log = DecisionLog("rl", stream=stream)
    service = RateLimitService(Settings(table_of(LIMITS)), GuardedBackend(MemoryBackend(), 1.0),
                               clock=lambda: 1_800_000_010.0, decision_log=log)
    for _ in range(4):
        await service.decide(request((("user", "hal"),), (("ip", "9.9.9.9"),)))
    log.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1  # admitted requests are counted, not logged
    assert lines[0]["event"] == "rate_limited" and lines[0]["descriptors"] == ["svc.user"]
    assert lines[0]["retry_after_ms"] == 50_000


def _bare(domain: str, *descriptors: tuple[tuple[str, str], ...]) -> rls_pb2.RateLimitRequest:
    out = rls_pb2.RateLimitRequest(domain=domain)
    for entries in descriptors:
        d = out.descriptors.add()  # possibly with no entries at all
        for key, value in entries:
            d.entries.add(key=key, value=value)
    return out


@pytest.mark.parametrize(("bad", "message"), [
    # envoyproxy/ratelimit's messages (src/service/ratelimit.go, shouldRateLimitWorker)
    (_bare("", (("user", "x"),)), "rate limit domain must not be empty"),
    (_bare("svc"), "rate limit descriptor list must not be empty"),
    # The proto's rules: a descriptor has at least one entry, an entry a key (validate.rules)
    (_bare("svc", (("user", "x"),), ()), "rate limit descriptor 1 has no entries"),
    (_bare("svc", (("", "x"),)), "rate limit descriptor 0 has an entry with an empty key"),
    # Bounded work per request: a flood of descriptors in one message would hold the event loop.
    (_bare("svc", *[(("user", "x"),)] * 257), "more than 256 rate limit descriptors"),
    (_bare("svc", tuple(("user", "x") for _ in range(65))), "rate limit descriptor 0 has more than 64 entries"),
])
async def test_malformed_requests_are_invalid_argument(stub: rls_pb2_grpc.RateLimitServiceStub,
                                                        bad: rls_pb2.RateLimitRequest, message: str) -> None:
    invalid = REGISTRY.get_sample_value("rate_limit_invalid_requests_total") or 0.0
    for _ in range(2):  # the second time too (a refused request is never cached as a plan)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ShouldRateLimit(bad, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == message
    assert (REGISTRY.get_sample_value("rate_limit_invalid_requests_total") or 0) - invalid == 2
    # An empty value is valid (the proto allows it): the key alone matches.
    ok = await stub.ShouldRateLimit(_bare("svc", (("user", ""),)), timeout=5)
    assert ok.overall_code == Response.OK and ok.statuses[0].current_limit.requests_per_unit == 3


async def test_bytes_that_are_no_request_are_invalid_argument() -> None:
    server, port, _ = await serve(MemoryBackend())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\xff\xff\xff", timeout=5)
    await server.stop(None)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
