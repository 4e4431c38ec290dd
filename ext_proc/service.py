"""gRPC adapter: the ExternalProcessor/Process stream ↔ Session events and actions. Errors map here, once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from ext_proc.cache_backends import CacheBackend, CacheUnavailable
from ext_proc.envoy import CONTENT_TYPE_KEY, NO_CONTENT_TYPE, RESPONSE_NAMESPACE
from ext_proc.events import (
    Action,
    CacheResult,
    Event,
    Immediate,
    InvalidateCache,
    LookupCache,
    Note,
    Reply,
    RequestBody,
    RequestHeaders,
    ResponseBody,
    ResponseHeaders,
    StoreCache,
    Trailers,
)
from ext_proc.metrics import EventCounter, ExtProcMetrics, LabelCache, service_metrics
from ext_proc.plan import DEFAULT_ROUTE, RoutePlan
from ext_proc.session import Session, error_response
from outrider.envoy_access_log import CACHE_HIT_KEY, CACHE_NAMESPACE
from outrider.logs import REQUEST_ID, DecisionLog
from outrider.tracing import ServiceTracer

log = logging.getLogger("ext_proc.service")
# Spans only with OTEL_EXPORTER_OTLP_ENDPOINT set, and only for a sampled request (outrider/tracing.py).
TRACER = ServiceTracer("ext_proc")

ROUTE_METADATA = "x-outrider-route"
# The Envoy attribute the ext_proc filter is configured to send (request_attributes in its config).
CLIENT_ADDRESS_ATTRIBUTE = "source.address"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_IF_ABSENT = base_pb2.HeaderValueOption.ADD_IF_ABSENT
_PM = processing_mode_pb2.ProcessingMode
_BODY_RESPONSES = {"request_body", "response_body"}
_TRAILER_RESPONSES = {"request_trailers", "response_trailers"}


def headers_of(header_map: Any) -> dict[str, str]:
    """Envoy's HeaderMap → {lower-case name: value}; a repeated header's values are joined with ','."""
    out: dict[str, str] = {}
    for header in header_map.headers:
        key = header.key
        raw = header.raw_value
        value = raw.decode("utf-8", "surrogateescape") if raw else header.value
        if key in out:
            value = out[key] + "," + value
        out[key] = value
    return out


def address_without_port(address: str) -> str:
    """"10.0.0.7:5555" → "10.0.0.7", "[::1]:5555" → "::1"; anything without a port (a pipe path) as it is."""
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else address
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host
    return address


def client_ip_of(message: pb.ProcessingRequest) -> str:
    """The downstream address Envoy saw for this request, without the port; "" if Envoy did not send it.

    The filter asks for the `source.address` attribute (`request_attributes`, see the ext_proc filter
    config); Envoy sends the values of the request attributes with the request_headers message, in
    ProcessingRequest.attributes, a map of Structs keyed by the filter's name ("The values of properties
    selected by the request_attributes or response_attributes list in the configuration", Envoy API
    envoy/service/ext_proc/v3/external_processor.proto). It is the address Envoy's
    %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% gives, so `${client_ip}` agrees with the native header edits.
    """
    for attributes in message.attributes.values():
        value = attributes.fields.get(CLIENT_ADDRESS_ATTRIBUTE)
        if value is not None:
            return address_without_port(value.string_value)
    return ""


def forwarded_content_type(message: pb.ProcessingRequest) -> str | None:
    """The response's content-type Envoy forwarded with a body message (header_to_metadata's copy, see
    RESPONSE_NAMESPACE in ext_proc/envoy.py: the `metadata_options.forwarding_namespaces` of the filter, sent
    in ProcessingRequest.metadata_context); "" for a response without one, None if nothing was forwarded."""
    namespace = message.metadata_context.filter_metadata.get(RESPONSE_NAMESPACE)
    if namespace is None:
        return None
    value = namespace.fields.get(CONTENT_TYPE_KEY)
    if value is None:
        return None
    text = value.string_value
    return "" if text == NO_CONTENT_TYPE else text


def to_event(message: pb.ProcessingRequest, which: str) -> Event:
    if which == "request_headers":
        return RequestHeaders(headers_of(message.request_headers.headers), message.request_headers.end_of_stream,
                              client_ip_of(message))
    if which == "response_headers":
        return ResponseHeaders(headers_of(message.response_headers.headers), message.response_headers.end_of_stream)
    if which == "request_body":
        return RequestBody(message.request_body.body, message.request_body.end_of_stream)
    if which == "response_body":
        return ResponseBody(message.response_body.body, message.response_body.end_of_stream,
                            forwarded_content_type(message))
    return Trailers(which)  # type: ignore[arg-type]


def _header_option(name: str, value: str, if_absent: bool) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, raw_value=value.encode("utf-8", "surrogateescape")),
        append_action=_IF_ABSENT if if_absent else _OVERWRITE)


def _body_mode(send: bool, partial: bool) -> Any:
    """The BodySendMode of a mode override; the modes' reasons are with the route's (ext_proc/envoy.py)."""
    if not send:
        return _PM.NONE
    return _PM.BUFFERED_PARTIAL if partial else _PM.BUFFERED


def build_reply(reply: Reply) -> pb.ProcessingResponse:
    common = pb.CommonResponse()
    if reply.set_headers or reply.remove_headers:
        common.header_mutation.set_headers.extend(_header_option(*h) for h in reply.set_headers)
        common.header_mutation.remove_headers.extend(reply.remove_headers)
    if reply.body is not None:
        common.body_mutation.body = reply.body
    if reply.phase in _BODY_RESPONSES:
        response = pb.ProcessingResponse(**{reply.phase: pb.BodyResponse(response=common)})
    elif reply.phase in _TRAILER_RESPONSES:
        response = pb.ProcessingResponse(**{reply.phase: pb.TrailersResponse()})
    else:
        response = pb.ProcessingResponse(**{reply.phase: pb.HeadersResponse(response=common)})
    if reply.mode is not None:
        mode = response.mode_override
        mode.request_body_mode = _body_mode(reply.mode.request_body, reply.mode.request_partial)
        mode.response_header_mode = _PM.SEND if reply.mode.response_headers else _PM.SKIP
        mode.response_body_mode = _body_mode(reply.mode.response_body, partial=True)
        mode.request_trailer_mode = _PM.SKIP
        mode.response_trailer_mode = _PM.SKIP
    return response


CACHE_HIT = "cache_hit"  # the reason of the Immediate that answers from the cache (ext_proc/session.py)


def build_immediate(immediate: Immediate) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse()
    out = response.immediate_response
    out.status.code = immediate.status
    out.headers.set_headers.extend(_header_option(k, v, False) for k, v in immediate.headers)
    out.body = immediate.body
    out.details = immediate.reason
    if immediate.reason == CACHE_HIT:
        # Read by Envoy's access log (`cache_hit`); a miss leaves nothing, which the log reads as false.
        response.dynamic_metadata.update({CACHE_NAMESPACE: {CACHE_HIT_KEY: True}})
    return response


def _phase_of(which: str) -> str:
    return which if which in ("request_headers", "response_headers", *_BODY_RESPONSES, *_TRAILER_RESPONSES) \
        else "request_headers"


class Live:
    """One applied config version as the service runs it. A stream keeps the one it started with, so a
    new version never changes a request halfway; a retired version's cache closes once nothing uses it."""

    def __init__(self, plans: Mapping[str, RoutePlan], cache: CacheBackend | None,
                 failure_mode_allow: bool = False, version: str = "", cache_prefix: str = "") -> None:
        self.plans = plans
        self.default = plans[DEFAULT_ROUTE]
        self.cache = cache
        self.cache_prefix = cache_prefix  # the key prefix of the cache's entries (purges by path)
        self.failure_mode_allow = failure_mode_allow
        self.version = version
        self._users = 0
        self._on_idle: Callable[[], None] | None = None

    def hold(self) -> None:
        self._users += 1

    def release(self) -> None:
        self._users -= 1
        if self._users == 0 and self._on_idle is not None:
            self._on_idle()
            self._on_idle = None

    def retire(self, on_idle: Callable[[], None]) -> None:
        """Call on_idle once no stream (nor cache write) of this version is left — now, if none is."""
        if self._users == 0:
            on_idle()
        else:
            self._on_idle = on_idle


class ExternalProcessorService(external_processor_pb2_grpc.ExternalProcessorServicer):
    """envoy.service.ext_proc.v3.ExternalProcessor/Process: one Session per stream, on the live version."""

    def __init__(self, live: Live | None, decision_log: DecisionLog, clock: Callable[[], float] = time.time,
                 metrics: ExtProcMetrics | None = None) -> None:
        self.live = live
        self._log = decision_log
        self._clock = clock
        self._metrics = metrics or service_metrics()
        self._streams = LabelCache(self._metrics.streams)
        self._events = EventCounter(self._metrics)
        self._background: set[asyncio.Task[None]] = set()

    def use(self, live: Live) -> Live | None:
        """Swap in a new version (one assignment: atomic for every stream that starts after it)."""
        old, self.live = self.live, live
        return old

    def count_purge(self, kind: str) -> None:
        """A purge webhook call that purged (ext_proc_events_total{kind="cache_purge",detail=path|prefix})."""
        self._events.inc("cache_purge", kind)

    @staticmethod
    def _plan_for(live: Live, context: grpc.aio.ServicerContext) -> RoutePlan:
        for key, value in context.invocation_metadata() or ():
            if key == ROUTE_METADATA:
                return live.plans.get(value, live.default)
        return live.default

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        live = self.live
        if live is None:
            # No config version yet (health says NOT_SERVING): Envoy applies its failure mode.
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no config version applied yet")
            return
        live.hold()
        # The design's response_transform stage: from the first response message Envoy sends to the answer
        # that ends the session, child of Envoy's ext_proc client span (metadata read once per stream).
        metadata = context.invocation_metadata() if TRACER.enabled else None
        span: Any = None
        try:
            plan = self._plan_for(live, context)
            self._streams.inc(plan.name)
            session = Session(plan)
            async for message in request_iterator:
                started = time.perf_counter()
                which = message.WhichOneof("request") or "request_headers"
                if metadata is not None and span is None and which.startswith("response_"):
                    span = TRACER.start("response_transform", metadata)
                    metadata = None
                stores: list[StoreCache] = []
                try:
                    event = to_event(message, which)
                    if isinstance(event, RequestHeaders):
                        # This stream's own task: its log lines, and the cache writes it starts, carry the id.
                        REQUEST_ID.set(event.headers.get("x-request-id"))
                    response = await self._answer(session, live, event, stores)
                except Exception:
                    # A bug must not kill the stream nor open the gateway: answer per the failure mode.
                    log.exception("message failed", extra={"route": plan.name, "phase": which})
                    self._metrics.errors.inc()
                    response = self._on_error(session, live, which)
                # Stores run beside the answer: the client never waits for the cache write, and Envoy
                # closing the stream after its last answer must not cancel them.
                for store in stores:
                    live.hold()
                    task = asyncio.create_task(self._store(live, store))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                self._metrics.message_seconds.observe(time.perf_counter() - started)
                if span is not None and session.state == "done":
                    span.end()
                    span = None
                yield response
        finally:
            if span is not None:
                span.end()
            live.release()

    async def _answer(self, session: Session, live: Live, event: Event,
                      stores: list[StoreCache]) -> pb.ProcessingResponse:
        """Run the session's actions: invalidations before the answer, stores handed back for after it."""
        actions: list[Action] = session.handle(event, self._clock())
        while True:
            answer: pb.ProcessingResponse | None = None
            lookup: LookupCache | None = None
            for action in actions:
                if isinstance(action, Reply):
                    answer = build_reply(action)
                elif isinstance(action, Immediate):
                    answer = build_immediate(action)
                elif isinstance(action, Note):
                    self._note(session, action)
                elif isinstance(action, StoreCache):
                    stores.append(action)
                elif isinstance(action, InvalidateCache):
                    await self._invalidate(live.cache, action.resource)
                elif isinstance(action, LookupCache):
                    lookup = action
            if answer is not None:
                return answer
            if lookup is None:
                raise RuntimeError("session produced no answer")
            actions = session.handle(CacheResult(await self._get(live.cache, lookup.key)), self._clock())

    @staticmethod
    def _on_error(session: Session, live: Live, which: str) -> pb.ProcessingResponse:
        session.state = "done"
        if live.failure_mode_allow:
            return build_reply(Reply(_phase_of(which)))  # type: ignore[arg-type]
        return build_immediate(error_response(500, "internal_error", session.ctx.request_id, "internal_error"))

    def _note(self, session: Session, note: Note) -> None:
        self._events.inc(note.kind, note.detail)
        if note.log:
            self._log.write({"event": "ext_proc", "kind": note.kind, "rule": note.detail,
                             "route": session.plan.name, "request_id": session.ctx.request_id,
                             "method": session.method, "path": session.path.split("?", 1)[0][:256]})

    async def _get(self, cache: CacheBackend | None, key: str) -> bytes | None:
        if cache is None:
            return None
        try:
            return await cache.get(key)
        except CacheUnavailable as exc:
            self._metrics.cache_errors.inc()
            log.warning("cache get failed", extra={"error": str(exc)})
            return None

    async def _store(self, live: Live, store: StoreCache) -> None:
        try:
            if live.cache is None:
                return
            await live.cache.put(store.key, store.resource, store.path, store.value, store.ttl_s)
            self._events.inc("cache_store", "")
        except CacheUnavailable as exc:
            self._metrics.cache_errors.inc()
            log.warning("cache put failed", extra={"error": str(exc)})
        finally:
            live.release()

    async def _invalidate(self, cache: CacheBackend | None, resource: str) -> None:
        if cache is None:
            return
        try:
            await cache.invalidate(resource)
            self._events.inc("cache_invalidate", "")
        except CacheUnavailable as exc:
            self._metrics.cache_errors.inc()
            log.warning("cache invalidate failed", extra={"error": str(exc)})
