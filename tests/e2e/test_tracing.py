"""OpenTelemetry tracing through the real stack: one sampled request is one connected trace (Envoy's spans and
the services' spans, right parents, one trace id); an unsampled one leaves no span anywhere."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from outrider.process import free_port
from tests.conftest import start_stack
from tests.harness import Stack, example_config_dict

SERVICE_SPANS = ("auth_validate", "rate_limit_check", "response_transform")


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector in this process: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next((a.value.string_value for a in resource_spans.resource.attributes
                                if a.key == "service.name"), "")
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(Span(service, span.name, span.trace_id.hex(), span.span_id.hex(),
                                               span.parent_span_id.hex()))
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def serve_receiver(workers: int = 4) -> tuple[Receiver, grpc.Server, int]:
    """A started in-process OTLP/gRPC receiver on a free loopback port."""
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return servicer, server, port


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    servicer, server, port = serve_receiver()
    yield servicer, port
    server.stop(0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, receiver: tuple[Receiver, int]) -> Iterator[Stack]:
    data = example_config_dict()
    # Envoy starts no trace of its own (0 %): only the client's sampled traceparent makes one, so the test
    # also shows that an incoming sampled context is always traced. Spans leave Envoy every 100 ms.
    data.setdefault("logging", {})["tracing"] = {"sampling_percent": 0, "flush_interval_ms": 100}
    with pytest.MonkeyPatch.context() as patch:
        # The standard variables every process of the stack reads (Envoy's compilers and the services).
        patch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver[1]}")
        patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        running = start_stack(tmp_path_factory.mktemp("tracing"), data)
    yield running
    running.stop()


def traceparent(sampled: bool) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def wait_for(receiver: Receiver, trace_id: str, names: set[str], timeout_s: float = 15.0) -> list[Span]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spans = receiver.of_trace(trace_id)
        if names <= {s.name for s in spans}:
            return spans
        time.sleep(0.05)
    spans = receiver.of_trace(trace_id)
    raise AssertionError(f"missing spans {names - {s.name for s in spans}}; got {spans}")


def send(stack: Stack, header: str | None, request_id: str | None = None) -> None:
    headers = {"authorization": f"Bearer {stack.token()}"}
    if header is not None:
        headers["traceparent"] = header
    if request_id is not None:
        headers["x-request-id"] = request_id
    # A path of its own per request: the example caches GET /api/v1/users/*, and a cache hit calls no upstream.
    response = stack.get(f"/api/v1/users/trace-{secrets.token_hex(4)}", headers=headers)
    assert response.status_code == 200, response.text


def test_a_sampled_request_is_one_connected_trace(stack: Stack, receiver: tuple[Receiver, int]) -> None:
    header, trace_id, client_span = traceparent(sampled=True)
    # A client's own request id, not a UUID: Envoy's own sampling would find it untraceable.
    send(stack, header, request_id=f"trace-{secrets.token_hex(4)}")
    spans = wait_for(receiver[0], trace_id, {"gateway_receive", "router demo egress", *SERVICE_SPANS})
    by_id = {s.span_id: s for s in spans}
    # Envoy's request span (the route's decorator names it) continues the client's.
    root = next(s for s in spans if s.name == "gateway_receive")
    assert root.parent_id == client_span and root.service == "outrider-gateway"
    # The upstream call: the router's own span (spawn_upstream_span), a child of the request's.
    assert next(s for s in spans if s.name == "router demo egress").parent_id == root.span_id
    for name, service, call in (
        ("auth_validate", "outrider-ext_authz", "async envoy.service.auth.v3.Authorization.Check egress"),
        ("rate_limit_check", "outrider-ratelimit",
         "async envoy.service.ratelimit.v3.RateLimitService.ShouldRateLimit egress"),
        ("response_transform", "outrider-ext_proc",
         "async envoy.service.ext_proc.v3.ExternalProcessor.Process egress"),
    ):
        span = next(s for s in spans if s.name == name)
        parent = by_id.get(span.parent_id)
        # Each service's span is a child of Envoy's client span for that call, itself a child of the request's.
        assert span.service == service, span
        assert parent is not None and parent.name == call and parent.service == "outrider-gateway", (span, spans)
        assert parent.parent_id == root.span_id, (name, parent)
    # Nothing of the trace hangs loose: every parent but the client's is a span of the trace.
    assert {s.parent_id for s in spans} - set(by_id) == {client_span}, spans


def test_an_unsampled_request_leaves_no_span(stack: Stack, receiver: tuple[Receiver, int]) -> None:
    before = len(receiver[0].spans)
    unsampled, unsampled_id, _ = traceparent(sampled=False)
    send(stack, unsampled)
    send(stack, None)  # no traceparent at all: Envoy's own 0 % applies
    # A sampled request after it, through the same processes: once its spans are all in, every exporter has
    # flushed past the unsampled one (each sends in order), so anything of it would be in by now too.
    sampled, sampled_id, _ = traceparent(sampled=True)
    send(stack, sampled)
    wait_for(receiver[0], sampled_id, {"gateway_receive", "router demo egress", *SERVICE_SPANS})
    assert receiver[0].of_trace(unsampled_id) == []
    # Only the sampled request's trace came in (the one without a traceparent would have a trace id of its own).
    earlier = {s.trace_id for s in receiver[0].spans[:before]}
    assert {s.trace_id for s in receiver[0].spans[before:]} - earlier == {sampled_id}
