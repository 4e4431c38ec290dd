"""gRPC adapter: RateLimitRequest → decision core → RateLimitResponse. Errors map to the failure mode here."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from outrider.logs import DecisionLog
from ratelimit_service.decision import (
    OVER_LIMIT,
    Decision,
    DescriptorInput,
    Plan,
    PlannedDescriptor,
    decide,
    locally_over,
    plan,
    remember_over,
)
from ratelimit_service.guard import GuardedBackend
from ratelimit_service.limits import Limit, LimitTable
from ratelimit_service.metrics import DescriptorCounts, RateLimitMetrics, service_metrics

log = logging.getLogger("ratelimit_service.service")

Response = rls_pb2.RateLimitResponse
_UNIT_NAMES = {v: k.lower() for k, v in Response.RateLimit.Unit.items() if v}
_UNIT_VALUES = {name: value for value, name in _UNIT_NAMES.items()}
_JSON = base_pb2.HeaderValue(key="content-type", value="application/json")
PLAN_CACHE_ENTRIES = 65_536
SERVICE = "envoy.service.ratelimit.v3.RateLimitService"


@dataclass(frozen=True)
class Settings:
    """What a reload may change; swapped as one object so a request sees one consistent version."""

    table: LimitTable
    near_ratio: float = 0.8
    failure_mode_deny: bool = False


# The settings before any config version: no table yet. Calls are answered UNAVAILABLE so that Envoy
# applies the failure mode the gateway chose (failure_mode_deny) rather than one guessed here.
NOT_READY = Settings(LimitTable({}))


def _seconds(ms: int) -> int:
    return max(0, math.ceil(ms / 1000))


def rejection_body(retry_after_s: int) -> bytes:
    return json.dumps({"error": "rate_limited", "message": "Too many requests; retry later.",
                       "retry_after": retry_after_s}, separators=(",", ":")).encode()


def _inputs(request: rls_pb2.RateLimitRequest) -> list[DescriptorInput]:
    default_hits = request.hits_addend or 1
    inputs = []
    for d in request.descriptors:
        hits = d.hits_addend.value if d.HasField("hits_addend") else default_hits
        override = None
        if d.HasField("limit"):
            override = (d.limit.requests_per_unit, _UNIT_NAMES.get(d.limit.unit, "second"))
        inputs.append(DescriptorInput(tuple([(e.key, e.value) for e in d.entries]), hits, override))
    return inputs


def _descriptor_count(data: bytes) -> list[None]:
    try:
        return [None] * len(rls_pb2.RateLimitRequest.FromString(data).descriptors)
    except Exception:  # undecodable: Envoy only reads the overall code then
        return []


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit."""

    def __init__(self, settings: Settings, guard: GuardedBackend,
                 clock: Callable[[], float] = time.time, decision_log: DecisionLog | None = None,
                 metrics: RateLimitMetrics | None = None) -> None:
        self.settings = settings
        # Refusals only: admitted requests are the bulk and are counted in metrics instead.
        self._log = decision_log or DecisionLog("ratelimit_service", enabled=False)
        # Kept apart from settings so that the failure answer needs nothing that could have failed.
        self._deny = settings.failure_mode_deny
        self._guard = guard
        self._clock = clock
        self._over_until: dict[str, int] = {}
        self._metrics = metrics or service_metrics()
        self._descriptors = DescriptorCounts(self._metrics)
        self._limit_protos: dict[Limit, Any] = {}
        self._failure = {m: self._metrics.failure_mode.labels(mode=m) for m in ("allow", "deny")}
        # serialized request → [settings, domain, inputs, plan]
        self._plans: dict[bytes, list[Any]] = {}

    def swap(self, settings: Settings, guard: GuardedBackend | None = None) -> None:
        """Make a new version live (one attribute store; a request in flight keeps the one it read)."""
        if guard is not None:
            self._guard = guard  # the store is chosen once, with the first version
        self.settings = settings
        self._deny = settings.failure_mode_deny
        self._limit_protos.clear()
        # Limits may have changed: a counter remembered as over may not be over any more.
        self._over_until.clear()
        self._plans.clear()

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        started = time.perf_counter()
        try:
            response = await self.decide(request)
        except Exception:
            # A bug must neither fail the RPC nor block traffic unexpectedly: answer in the failure mode.
            log.exception("ShouldRateLimit failed", extra={"domain": request.domain})
            self._metrics.internal_errors.inc()
            response = self._failure_response(request.descriptors)
        self._metrics.decision_seconds.observe(time.perf_counter() - started)
        return response

    async def ShouldRateLimitBytes(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The same method on serialized bytes: a repeated request skips parsing and planning."""
        started = time.perf_counter()
        settings = self.settings
        if settings is NOT_READY:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no rate limit config applied yet")
        now_ms = int(self._clock() * 1000)
        try:
            entry = self._plans.get(data)
            if entry is None or entry[0] is not settings:
                request = rls_pb2.RateLimitRequest.FromString(data)
                domain, inputs = request.domain, _inputs(request)
                laid_out = plan(settings.table, domain, inputs, now_ms)
                if len(self._plans) >= PLAN_CACHE_ENTRIES:
                    self._plans.clear()  # distinct requests without end must not grow memory without bound
                self._plans[data] = entry = [settings, domain, inputs, laid_out]
            elif entry[3].valid_until_ms <= now_ms:
                entry[3] = plan(settings.table, entry[1], entry[2], now_ms)
            response = await self._decide_planned(settings, entry[3], now_ms)
        except Exception:
            log.exception("ShouldRateLimit failed")
            self._metrics.internal_errors.inc()
            response = self._failure_response(_descriptor_count(data))
        self._metrics.decision_seconds.observe(time.perf_counter() - started)
        return bytes(response.SerializeToString())

    async def decide(self, request: rls_pb2.RateLimitRequest) -> rls_pb2.RateLimitResponse:
        settings = self.settings
        now_ms = int(self._clock() * 1000)
        return await self._decide_planned(settings, plan(settings.table, request.domain, _inputs(request), now_ms),
                                          now_ms)

    async def _decide_planned(self, settings: Settings, laid_out: Plan, now_ms: int) -> rls_pb2.RateLimitResponse:
        domain = laid_out.domain
        if not laid_out.checks:
            outcomes = []
        else:
            cached = locally_over(laid_out, self._over_until, now_ms)
            if cached is not None:
                self._metrics.local_cache_hits.inc()
                outcomes = cached
            else:
                fresh = await self._guard.evaluate(domain, laid_out.checks, now_ms)
                if fresh is None:
                    return self._failure_response(laid_out.descriptors)
                remember_over(laid_out, fresh, self._over_until, now_ms)
                outcomes = fresh
        decision = decide(laid_out, outcomes, settings.near_ratio)
        self._count(domain, laid_out.descriptors, decision)
        if decision.over:
            self._log.write({
                "event": "rate_limited", "domain": domain, "retry_after_ms": decision.retry_after_ms,
                "descriptors": [d.metric_key for d, s in zip(laid_out.descriptors, decision.statuses, strict=True)
                                if s.code == OVER_LIMIT],
            })
        return self._response(decision)

    def _count(self, domain: str, descriptors: list[PlannedDescriptor], decision: Decision) -> None:
        for d, status in zip(descriptors, decision.statuses, strict=True):
            if not d.metric_key:
                continue
            row = self._descriptors.row(domain, d.metric_key)
            row.hits.inc(d.hits)
            if status.code == OVER_LIMIT:
                row.rejections.inc()
            elif status.shadow_over:
                row.shadow.inc()
            elif status.near:
                row.near_limit.inc(d.hits)

    def _limit_proto(self, limit: Limit) -> Any:
        proto = self._limit_protos.get(limit)
        if proto is None:
            proto = self._limit_protos[limit] = Response.RateLimit(
                name=limit.name, requests_per_unit=limit.requests_per_unit, unit=_UNIT_VALUES[limit.unit])
        return proto

    def _response(self, decision: Decision) -> rls_pb2.RateLimitResponse:
        response = Response(overall_code=Response.OVER_LIMIT if decision.over else Response.OK)
        for st in decision.statuses:
            status = response.statuses.add(code=st.code, limit_remaining=st.remaining)
            if st.limit is not None:
                status.current_limit.CopyFrom(self._limit_proto(st.limit))
                status.duration_until_reset.seconds = _seconds(st.reset_ms)
        if decision.headline is not None:
            limit, remaining, reset_ms = decision.headline
            headers = response.response_headers_to_add
            headers.add(key="RateLimit-Limit", value=str(limit))
            headers.add(key="RateLimit-Remaining", value=str(remaining))
            headers.add(key="RateLimit-Reset", value=str(_seconds(reset_ms)))
        if decision.over:
            retry = max(1, _seconds(decision.retry_after_ms))
            response.response_headers_to_add.add(key="Retry-After", value=str(retry))
            response.response_headers_to_add.append(_JSON)
            response.raw_body = rejection_body(retry)
        return response

    def _failure_response(self, descriptors: Sized) -> rls_pb2.RateLimitResponse:
        deny = self._deny
        self._failure["deny" if deny else "allow"].inc()
        code = Response.OVER_LIMIT if deny else Response.OK
        response = Response(overall_code=code)
        for _ in range(len(descriptors)):
            response.statuses.add(code=code)
        if deny:
            response.response_headers_to_add.add(key="Retry-After", value="1")
            response.response_headers_to_add.append(_JSON)
            response.raw_body = rejection_body(1)
        return response


def add_to_server(service: RateLimitService, server: grpc.aio.Server) -> None:
    """Register ShouldRateLimit on raw bytes (the plan cache needs the request's serialized form)."""
    handler = grpc.unary_unary_rpc_method_handler(service.ShouldRateLimitBytes)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"ShouldRateLimit": handler}),))
