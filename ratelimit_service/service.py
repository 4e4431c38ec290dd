"""gRPC adapter: RateLimitRequest → decision core → RateLimitResponse. Errors, overload and bad requests map here."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf.message import DecodeError

from outrider.logs import DecisionLog
from outrider.tracing import ServiceTracer
from ratelimit_service.algorithms import Outcome
from ratelimit_service.backends.base import CHARGE_ALL, CHARGE_NONE, CHARGE_UNLESS_OVER, Check
from ratelimit_service.config import FAILURE_MODE_KEY
from ratelimit_service.decision import (
    OVER_LIMIT,
    Decision,
    DescriptorInput,
    Plan,
    decide,
    locally_over,
    plan,
    remember_over,
)
from ratelimit_service.guard import GuardedBackend
from ratelimit_service.keys import split
from ratelimit_service.limits import BAN, Limit, LimitTable
from ratelimit_service.mesh import MeshMaps
from ratelimit_service.metrics import SHED_REASONS, DescriptorCounts, RateLimitMetrics, service_metrics

log = logging.getLogger("ratelimit_service.service")
# Spans only with OTEL_EXPORTER_OTLP_ENDPOINT set, and only for a sampled request (outrider/tracing.py).
TRACER = ServiceTracer("ratelimit")

Response = rls_pb2.RateLimitResponse
_UNIT_NAMES = {v: k.lower() for k, v in Response.RateLimit.Unit.items() if v}
_UNIT_VALUES = {name: value for value, name in _UNIT_NAMES.items()}
_JSON = base_pb2.HeaderValue(key="content-type", value="application/json")
# Serialized request → its plan. Bounded in entries and, by skipping big requests, in bytes: a flood of
# distinct requests costs at most about PLAN_CACHE_ENTRIES × 2 KB.
PLAN_CACHE_ENTRIES = 16_384
PLAN_CACHE_MAX_BYTES = 1024
# The local over-limit cache is sized in bytes, as envoyproxy/ratelimit's LOCAL_CACHE_SIZE_IN_BYTES
# (a freecache there): about this many bytes per remembered counter (key, expiry, dict slot).
LOCAL_CACHE_ENTRY_BYTES = 160
LIMIT_PROTO_ENTRIES = 4096
# Ban counters' hits answered from the local over-limit cache, still to be added at the next store call;
# and the bans this process saw in force (rate_limit_banned_ips). Both bounded like the caches above.
PENDING_BAN_ENTRIES = 16_384
BANS_SEEN_ENTRIES = 100_000
# Far above what a route's actions make (one descriptor per rate_limits entry, one entry per action), and
# low enough that no single request holds the event loop: 500k descriptors fit in gRPC's 4 MB message.
MAX_DESCRIPTORS = 256
MAX_ENTRIES = 64
SERVICE = "envoy.service.ratelimit.v3.RateLimitService"


@dataclass(frozen=True)
class Settings:
    """What a reload may change; swapped as one object so a request sees one consistent version."""

    table: LimitTable
    near_ratio: float = 0.8
    # The gateway's failure policy; a route may choose its own (config.FAILURE_MODE_KEY descriptor).
    failure_mode_deny: bool = False
    # Overload (config.OverloadConfig): a request picked up with less left of its deadline is answered by
    # its failure policy at once; so is one arriving while max_in_flight decisions wait on the store.
    min_time_left_s: float = 0.03
    max_in_flight: int = 1024
    # A mesh's domains whose descriptors are read as ours (rate_limits.mesh); empty: none.
    mesh: MeshMaps = field(default_factory=lambda: MeshMaps(None))
    # rate_limits.stop_increment_when_over_limit (STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT): a request
    # some counter refuses charges none of its counters (backends/base.py CHARGE_UNLESS_OVER).
    stop_increment: bool = False
    # rate_limits.shadow_mode (SHADOW_MODE): every over-limit answer becomes OK overall, and is counted.
    global_shadow: bool = False
    # rate_limits.response_headers (LIMIT_RESPONSE_HEADERS_ENABLED): RateLimit-Limit/-Remaining/-Reset.
    response_headers: bool = True
    # Counters the local over-limit cache remembers at most (rate_limits.local_cache_size_bytes; 0: off).
    local_cache_entries: int = 0


def local_cache_entries(size_bytes: int) -> int:
    """LOCAL_CACHE_SIZE_IN_BYTES → counters remembered (0 bytes: no local cache, the reference's default)."""
    return size_bytes // LOCAL_CACHE_ENTRY_BYTES if size_bytes > 0 else 0


# The settings before any config version: no table yet. Calls are answered UNAVAILABLE so that Envoy
# applies the failure mode the gateway chose (failure_mode_deny) rather than one guessed here.
NOT_READY = Settings(LimitTable({}))


def _seconds(ms: int) -> int:
    return max(0, math.ceil(ms / 1000))


def rejection_body(retry_after_s: int) -> bytes:
    return json.dumps({"error": "rate_limited", "message": "Too many requests; retry later.",
                       "retry_after": retry_after_s}, separators=(",", ":")).encode()


def invalid_reason(request: rls_pb2.RateLimitRequest) -> str | None:
    """Why a request cannot be decided, or None. envoyproxy/ratelimit refuses an empty domain and an empty
    descriptor list with these messages (src/service/ratelimit.go, shouldRateLimitWorker); the proto
    requires at least one entry per descriptor and a key per entry (validate.rules min_items / min_len)."""
    if not request.domain:
        return "rate limit domain must not be empty"
    if not request.descriptors:
        return "rate limit descriptor list must not be empty"
    if len(request.descriptors) > MAX_DESCRIPTORS:
        return f"more than {MAX_DESCRIPTORS} rate limit descriptors"
    for index, descriptor in enumerate(request.descriptors):
        if not descriptor.entries:
            return f"rate limit descriptor {index} has no entries"
        if len(descriptor.entries) > MAX_ENTRIES:
            return f"rate limit descriptor {index} has more than {MAX_ENTRIES} entries"
        for entry in descriptor.entries:
            if not entry.key:
                return f"rate limit descriptor {index} has an entry with an empty key"
    return None


def deny_of(inputs: Sequence[DescriptorInput], default: bool) -> bool:
    """The request's failure policy: the route's (its FAILURE_MODE_KEY descriptor), else the gateway's."""
    for d in inputs:
        if len(d.entries) == 1 and d.entries[0][0] == FAILURE_MODE_KEY:
            return d.entries[0][1] == "deny"
    return default


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


class InvalidRequest(Exception):
    """A request refused with INVALID_ARGUMENT (the message says why)."""


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit."""

    def __init__(self, settings: Settings, guard: GuardedBackend,
                 clock: Callable[[], float] = time.time, decision_log: DecisionLog | None = None,
                 metrics: RateLimitMetrics | None = None) -> None:
        self.settings = settings
        # Refusals only: admitted requests are the bulk and are counted in metrics instead.
        self._log = decision_log or DecisionLog("ratelimit_service", enabled=False)
        self._guard = guard
        self._clock = clock
        # Kept apart from settings so that the failure answer needs nothing that could have failed.
        self._deny = settings.failure_mode_deny
        self._over_until: dict[str, int] = {}
        self._in_flight = 0
        # (deny, descriptor count) → the serialized failure answer: shedding must cost next to nothing.
        self._failure_bytes: dict[tuple[bool, int], bytes] = {}
        self._metrics = metrics or service_metrics()
        self._descriptors = DescriptorCounts(self._metrics)
        self._limit_protos: dict[Limit, Any] = {}
        self._failure = {m: self._metrics.failure_mode.labels(mode=m) for m in ("allow", "deny")}
        self._shed = {r: self._metrics.shed.labels(reason=r) for r in SHED_REASONS}
        # serialized request → [settings, domain, inputs, plan, deny]
        self._plans: dict[bytes, list[Any]] = {}
        self._ban_pending: dict[str, int] = {}
        self._bans_seen: dict[str, int] = {}  # ban key → end (ms)
        self._bans_pruned_ms = 0

    def swap(self, settings: Settings, guard: GuardedBackend | None = None) -> None:
        """Make a new version live (one attribute store; a request in flight keeps the one it read)."""
        if guard is not None:
            self._guard = guard  # the store is chosen once, with the first version
        self.settings = settings
        self._deny = settings.failure_mode_deny
        self._limit_protos.clear()
        self._failure_bytes.clear()
        # Limits may have changed: a counter remembered as over may not be over any more.
        self._over_until.clear()
        self._plans.clear()

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        """The typed method (for callers in this process); the server registers ShouldRateLimitBytes."""
        return Response.FromString(await self.ShouldRateLimitBytes(request.SerializeToString(), context))

    def _shed_reason(self, settings: Settings, context: grpc.aio.ServicerContext) -> str | None:
        """Why this request must be answered without a decision, or None. Envoy sets the call's deadline
        from the filter's timeout (grpc-timeout); what is left of it on arrival says how long the request
        queued here. Starting work that cannot finish in time would only make Envoy time out and apply
        its filter-wide failure mode, and every request behind it later still."""
        left = context.time_remaining()
        if left is not None and left < settings.min_time_left_s:
            return "deadline"
        if self._in_flight >= settings.max_in_flight:
            return "in_flight"
        return None

    async def ShouldRateLimitBytes(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """ShouldRateLimit on serialized bytes: a repeated request skips parsing and planning."""
        if TRACER.enabled:
            # The design's rate_limit_check stage, child of Envoy's rate limit client span.
            span = TRACER.start("rate_limit_check", context.invocation_metadata())
            if span is not None:
                try:
                    return await self._should_rate_limit(data, context)
                finally:
                    span.end()
        return await self._should_rate_limit(data, context)

    async def _should_rate_limit(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        settings = self.settings
        if settings is NOT_READY:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no rate limit config applied yet")
        now_ms = int(self._clock() * 1000)
        deny = self._deny
        descriptors = 0
        try:
            shed = self._shed_reason(settings, context)
            entry = self._plans.get(data)
            if entry is None or entry[0] is not settings:
                request = rls_pb2.RateLimitRequest.FromString(data)
                reason = invalid_reason(request)
                if reason is not None:
                    raise InvalidRequest(reason)
                domain, inputs = request.domain, _inputs(request)
                deny, descriptors = deny_of(inputs, deny), len(inputs)
                if settings.mesh:
                    domain, inputs = settings.mesh.translate(domain, inputs)
                if shed is not None:
                    return self._shed_answer(shed, deny, len(inputs), started)
                laid_out = plan(settings.table, domain, inputs, now_ms)
                if len(data) <= PLAN_CACHE_MAX_BYTES:
                    if len(self._plans) >= PLAN_CACHE_ENTRIES:
                        self._plans.clear()  # distinct requests without end must not grow memory without bound
                    self._plans[data] = entry = [settings, domain, inputs, laid_out, deny]
                else:
                    entry = [settings, domain, inputs, laid_out, deny]
            else:
                deny, descriptors = entry[4], len(entry[2])
                if shed is not None:
                    return self._shed_answer(shed, deny, len(entry[2]), started)
                if entry[3].valid_until_ms <= now_ms:
                    entry[3] = plan(settings.table, entry[1], entry[2], now_ms)
            self._in_flight += 1
            try:
                response = await self._decide_planned(settings, entry[3], now_ms, deny)
            finally:
                self._in_flight -= 1
        except InvalidRequest as exc:
            self._metrics.invalid_requests.inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except DecodeError:
            self._metrics.invalid_requests.inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a RateLimitRequest")
        except Exception:
            # A bug must neither fail the RPC nor block traffic unexpectedly: answer in the failure mode.
            log.exception("ShouldRateLimit failed")
            self._metrics.internal_errors.inc()
            response = self._failure_response(descriptors, deny)
        self._metrics.decision_seconds.observe(time.perf_counter() - started)
        return bytes(response.SerializeToString())

    def _shed_answer(self, reason: str, deny: bool, descriptors: int, started: float) -> bytes:
        self._shed[reason].inc()
        self._failure["deny" if deny else "allow"].inc()
        key = (deny, descriptors)
        answer = self._failure_bytes.get(key)
        if answer is None:
            answer = bytes(self._failure_response(descriptors, deny, count=False).SerializeToString())
            if descriptors <= 16:
                self._failure_bytes[key] = answer
        self._metrics.decision_seconds.observe(time.perf_counter() - started)
        return answer

    async def decide(self, request: rls_pb2.RateLimitRequest) -> rls_pb2.RateLimitResponse:
        """One decision without the overload checks (tests, benchmarks); raises InvalidRequest."""
        reason = invalid_reason(request)
        if reason is not None:
            raise InvalidRequest(reason)
        settings = self.settings
        now_ms = int(self._clock() * 1000)
        inputs = _inputs(request)
        deny = deny_of(inputs, settings.failure_mode_deny)
        domain, inputs = settings.mesh.translate(request.domain, inputs)
        return await self._decide_planned(settings, plan(settings.table, domain, inputs, now_ms), now_ms, deny)

    async def _decide_planned(self, settings: Settings, laid_out: Plan, now_ms: int,
                              deny: bool) -> rls_pb2.RateLimitResponse:
        domain = laid_out.domain
        checks = laid_out.checks
        outcomes: list[Outcome] = []
        if checks:
            known = locally_over(laid_out, self._over_until, now_ms) if self._over_until else {}
            if known and all(i in known or c.algorithm == BAN for i, c in enumerate(checks)):
                # Every counter is known over: nothing to charge, nothing to ask. Ban counts are kept for
                # the next store call (a ban's count is not a quota: it decides nothing here).
                self._metrics.local_cache_hits.inc()
                self._hold_ban_hits(checks)
                outcomes = [known.get(i, (False, c.limit, c.window_ms)) for i, c in enumerate(checks)]
            else:
                asked = [c for i, c in enumerate(checks) if i not in known] if known else checks
                if self._ban_pending:
                    asked = self._with_pending(asked)
                fresh = await self._guard.evaluate(domain, asked, now_ms, self._charge(settings, laid_out, known))
                if fresh is None:
                    return self._failure_response(len(laid_out.descriptors), deny)
                if known:
                    self._metrics.local_cache_hits.inc()
                    answers = iter(fresh)
                    fresh = [known[i] if i in known else next(answers) for i in range(len(checks))]
                if settings.local_cache_entries:
                    remember_over(laid_out, fresh, self._over_until, now_ms, settings.local_cache_entries)
                outcomes = fresh
        decision = decide(laid_out, outcomes, settings.near_ratio, settings.global_shadow)
        if decision.shadowed:
            self._metrics.global_shadow.inc()
        self._count(domain, laid_out, decision)
        if decision.started_bans:
            self._started(domain, decision.started_bans, laid_out.checks)
        if self._bans_seen and now_ms >= self._bans_pruned_ms + 1000:
            self._prune_bans(now_ms)  # once a second at most, and only while some ban is known
        if decision.over:
            self._log.write({
                "event": "rate_limited", "domain": domain, "retry_after_ms": decision.retry_after_ms,
                "descriptors": [d.metric_key for d, s in zip(laid_out.descriptors, decision.statuses, strict=True)
                                if s.code == OVER_LIMIT],
            })
        return self._response(decision, settings.response_headers)

    @staticmethod
    def _charge(settings: Settings, laid_out: Plan, known: dict[int, Outcome]) -> int:
        """What the store charges (backends/base.py CHARGE_*). With stop-increment, as the reference's Redis
        cache (src/redis/fixed_cache_impl.go DoLimit): a counter known over stops every increment; the
        over-limit check before incrementing runs only when the request has more than one descriptor
        (one counter alone is incremented, then compared)."""
        if not settings.stop_increment:
            return CHARGE_ALL
        if known:
            return CHARGE_NONE
        counted = sum(1 for c in laid_out.checks if c.algorithm != BAN)
        return CHARGE_UNLESS_OVER if len(laid_out.descriptors) > 1 or counted > 1 else CHARGE_ALL

    def _count(self, domain: str, laid_out: Plan, decision: Decision) -> None:
        for d, status in zip(laid_out.descriptors, decision.statuses, strict=True):
            if not d.metric_key:
                continue
            row = self._descriptors.row(domain, d.metric_key)
            row.hits.inc(d.hits)
            if status.code == OVER_LIMIT:
                if status.banned:
                    row.ban_rejections.inc()
                    for limit, index in d.limits:
                        if limit is status.limit:
                            self._note_ban(laid_out.checks[index].keys[0], status.reset_ms)
                else:
                    row.rejections.inc()
            elif status.shadow_over:
                row.shadow.inc()
            if status.near_hits:
                row.near_limit.inc(status.near_hits)

    # ---- the automatic ban (rate_limits.per_ip.ban) ---------------------------------------------------

    def _hold_ban_hits(self, checks: Sequence[Check]) -> None:
        """A request answered from the local cache still counts toward its address's ban: kept for later."""
        for check in checks:
            if check.algorithm == BAN and check.hits:
                if len(self._ban_pending) >= PENDING_BAN_ENTRIES and check.keys[1] not in self._ban_pending:
                    self._ban_pending.clear()  # bounded: a flood of addresses loses some counts, not memory
                self._ban_pending[check.keys[1]] = self._ban_pending.get(check.keys[1], 0) + check.hits

    def _with_pending(self, checks: list[Check]) -> list[Check]:
        """The checks with the held hits of their ban counters added (then forgotten here)."""
        out = checks
        for i, check in enumerate(checks):
            if check.algorithm == BAN:
                held = self._ban_pending.pop(check.keys[1], 0)
                if held:
                    out = list(out) if out is checks else out
                    out[i] = check._replace(hits=check.hits + held)
        return out

    def _started(self, domain: str, keys: Sequence[str], checks: Sequence[Check]) -> None:
        self._metrics.bans.inc(len(keys))
        for key in keys:
            ban_ms = next((c.ban_ms for c in checks if c.keys[0] == key), 0)
            self._note_ban(key, ban_ms, new=True)
            parts = split(key)
            log.warning("address banned", extra={"domain": domain, "client_ip": parts[2] if len(parts) == 4 else "",
                                                 "ban_s": ban_ms // 1000})

    def _note_ban(self, key: str, left_ms: int, new: bool = False) -> None:
        """Remember a ban in force (rate_limit_banned_ips); a banned address's every request lands here."""
        if key in self._bans_seen and not new:
            return  # known: its end only moves when a new ban starts
        now_ms = int(self._clock() * 1000)
        if key not in self._bans_seen and len(self._bans_seen) >= BANS_SEEN_ENTRIES:
            self._prune_bans(now_ms)
            if len(self._bans_seen) >= BANS_SEEN_ENTRIES:
                return  # bounded: the gauge under-reports rather than memory growing
        self._bans_seen[key] = now_ms + left_ms
        self._metrics.banned_ips.set(len(self._bans_seen))

    def _prune_bans(self, now_ms: int) -> None:
        self._bans_pruned_ms = now_ms
        expired = [k for k, end in self._bans_seen.items() if end <= now_ms]
        for key in expired:
            del self._bans_seen[key]
        if expired:
            self._metrics.banned_ips.set(len(self._bans_seen))

    def bans_listed(self, bans: Sequence[tuple[str, int]]) -> None:
        """The store's full list (GET /v1/bans): the gauge becomes exact."""
        now_ms = int(self._clock() * 1000)
        self._bans_seen = {key: now_ms + left for key, left in bans}
        self._metrics.banned_ips.set(len(self._bans_seen))

    def ban_lifted(self, key: str) -> None:
        self._bans_seen.pop(key, None)
        self._prune_bans(int(self._clock() * 1000))
        self._metrics.banned_ips.set(len(self._bans_seen))

    def _limit_proto(self, limit: Limit) -> Any:
        proto = self._limit_protos.get(limit)
        if proto is None:
            if len(self._limit_protos) >= LIMIT_PROTO_ENTRIES:
                self._limit_protos.clear()  # limits sent with descriptors are the caller's: keep this bounded
            proto = self._limit_protos[limit] = Response.RateLimit(
                name=limit.name, requests_per_unit=limit.requests_per_unit, unit=_UNIT_VALUES[limit.unit])
        return proto

    def _response(self, decision: Decision, headers_on: bool = True) -> rls_pb2.RateLimitResponse:
        response = Response(overall_code=Response.OVER_LIMIT if decision.over else Response.OK)
        for st in decision.statuses:
            status = response.statuses.add(code=st.code, limit_remaining=st.remaining)
            if st.limit is not None:
                status.current_limit.CopyFrom(self._limit_proto(st.limit))
                status.duration_until_reset.seconds = _seconds(st.reset_ms)
        if decision.headline is not None and headers_on:
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

    def _failure_response(self, descriptors: int, deny: bool, count: bool = True) -> rls_pb2.RateLimitResponse:
        """The answer by a failure policy: OK (allow) or 429 with Retry-After (deny); one status per descriptor."""
        if count:
            self._failure["deny" if deny else "allow"].inc()
        code = Response.OVER_LIMIT if deny else Response.OK
        response = Response(overall_code=code)
        for _ in range(descriptors):
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
