"""The services' spans: continue the trace Envoy started, from the W3C `traceparent` of a gRPC call's metadata.

Off (no SDK set up, no span, one attribute test per call) unless OTEL_EXPORTER_OTLP_ENDPOINT is set, the
standard variable the OTLP exporter reads. A span is made only when the incoming context is sampled: Envoy
made the sampling decision (10 % by default, `logging.tracing`), and a service never starts a trace of its
own, so an unsampled request costs a service nothing but reading its metadata.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("outrider.tracing")

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def parse_endpoint(endpoint: str, source: str) -> tuple[str, int, bool]:
    """(host, port, tls) of an OTLP/gRPC endpoint `http[s]://host[:port]`; ValueError naming `source`."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{source}: expected http://host:port or https://host:port (got {endpoint!r})")
    try:
        port = parts.port or 4317
    except ValueError as exc:
        raise ValueError(f"{source}: bad port in {endpoint!r}") from exc
    return parts.hostname, port, parts.scheme == "https"



def sampled_traceparent(metadata: Iterable[tuple[str, Any]] | None) -> tuple[str, str | None] | None:
    """(traceparent, tracestate) of call metadata when its trace is sampled, else None.

    traceparent is `version-traceid-spanid-flags` (https://www.w3.org/TR/trace-context/#traceparent-header);
    bit 0 of the flags is `sampled`.
    """
    parent: str | None = None
    state: str | None = None
    for key, value in metadata or ():
        if key == TRACEPARENT and isinstance(value, str):
            parent = value
        elif key == TRACESTATE and isinstance(value, str):
            state = value
    if parent is None or len(parent) < 55:
        return None
    try:
        flags = int(parent[53:55], 16)
    except ValueError:
        return None
    return (parent, state) if flags & 1 else None


class ServiceTracer:
    """One service's tracer: `start(name, metadata)` gives a started span or None (off, or not sampled)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.enabled = bool(os.environ.get(ENDPOINT_ENV))
        self._tracer: Any = None
        self._lock = threading.Lock()

    def _get_tracer(self) -> Any:
        # Set up on the first sampled call, not at import: a service forks its workers after importing, and
        # the exporter's thread must start in the process that uses it.
        with self._lock:
            if self._tracer is None:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
                from opentelemetry.sdk.resources import Resource
                from opentelemetry.sdk.trace import TracerProvider
                from opentelemetry.sdk.trace.export import BatchSpanProcessor

                # The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (an http:// one is plaintext) and the batch
                # processor OTEL_BSP_* (schedule delay, queue size) itself.
                provider = TracerProvider(resource=Resource.create({"service.name": f"outrider-{self.service}"}))
                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
                self._tracer = provider.get_tracer("outrider")
            return self._tracer

    def start(self, name: str, metadata: Iterable[tuple[str, Any]] | None) -> Any:
        """A started server span, child of the caller's span; None when off or not sampled. End it with
        `.end()`."""
        if not self.enabled:
            return None
        incoming = sampled_traceparent(metadata)
        if incoming is None:
            return None
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier = {TRACEPARENT: incoming[0]}
        if incoming[1]:
            carrier[TRACESTATE] = incoming[1]
        context = TraceContextTextMapPropagator().extract(carrier)
        try:
            return self._get_tracer().start_span(name, context=context, kind=SpanKind.SERVER)
        except Exception:
            # Tracing must never cost a request: a broken exporter install (see the Makefile's otel-proto
            # step) or setup error turns tracing off for this process, once, loudly.
            log.exception("tracing disabled: the OpenTelemetry exporter could not be set up",
                          extra={"service": self.service})
            self.enabled = False
            return None
