"""Envoy's OpenTelemetry tracer (config: `logging.tracing`): the HTTP connection manager's `tracing`, the
collector's cluster, and the runtime keys that set how often Envoy sends its spans.

On when a collector is known: `logging.tracing.endpoint`, else the standard OTEL_EXPORTER_OTLP_ENDPOINT of the
process that compiles Envoy's config (`outrider run` for the static bootstrap, xds_server for the listeners it
serves). Off, nothing here appears in Envoy's config at all.

Sampling (compile_tracing): the design's 10 % of requests, and always a request that arrives with a sampled
W3C traceparent (tests/e2e/test_tracing.py checks it against the Envoy we ship, at 0 %).
"""

from __future__ import annotations

import os
from typing import Any

from outrider.addresses import is_ip_address
from outrider.config.model import GatewayConfig
from outrider.envoy_contribution import HTTP2_OPTIONS, load_assignment, verified_tls_socket
from outrider.tracing import ENDPOINT_ENV, parse_endpoint

COLLECTOR_CLUSTER = "outrider_otel_collector"
SERVICE_NAME = "outrider-gateway"
OTEL_CONFIG_TYPE = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
SAMPLERS_TYPE = "type.googleapis.com/envoy.extensions.tracers.opentelemetry.samplers.v3."
# The system CA bundle (Debian/Ubuntu path) for an https:// collector.
# Envoy's own span names mapped to the design's stages: the downstream span of a request is named by its
# route's decorator (Envoy's default name is the host and path); the upstream span (spawn_upstream_span) is
# Envoy's `router <cluster> egress`.
GATEWAY_OPERATION = "gateway_receive"
# Envoy's OpenTelemetry tracer (one buffer per worker) sends an export call as soon as `min_flush_spans`
# spans are buffered (Envoy's default 5: about one call per sampled request, ~5 spans each) or every flush
# interval. Each call costs Envoy a gRPC request and the collector one more request to serve: at 700 req/s and
# 10 % that was ~70 calls a second. 512 leaves the flush interval to set the pace (one call per worker per
# interval under the design's load), bounds each worker's buffer, and keeps a call far below gRPC's 4 MB
# message limit (a span is a few hundred bytes). Measured with bench/tracing_bench.py (README "Observability").
MIN_FLUSH_SPANS = 512


def collector_endpoint(config: GatewayConfig) -> tuple[str, int, bool] | None:
    """The collector Envoy exports to, or None: tracing off."""
    if config.logging.tracing.endpoint:
        return parse_endpoint(config.logging.tracing.endpoint, "logging.tracing.endpoint")
    from_env = os.environ.get(ENDPOINT_ENV)
    if from_env:
        return parse_endpoint(from_env, ENDPOINT_ENV)
    return None


def _fraction(percent: float) -> dict[str, Any]:
    """A FractionalPercent of `percent` (per million: 2.5 % stays 2.5 %)."""
    return {"numerator": round(percent * 10_000), "denominator": "MILLION"}


def compile_tracing(config: GatewayConfig) -> dict[str, Any] | None:
    """The HTTP connection manager's fields for tracing (`tracing`, `request_id_extension`), or None when off.

    Who samples: the tracer's own sampler, parent based (OpenTelemetry's ParentBased): a request with a
    traceparent follows its sampled flag (sampled: always traced; unsampled: never), one without is traced
    at `sampling_percent` by its trace id. Envoy's own per-request decision must then say "trace" for every
    request: Envoy 1.40's OpenTelemetry tracer traces only when the parent (or sampler) AND Envoy's decision
    agree (measured: at random_sampling 0 a sampled traceparent gave no span; envoyproxy/envoy PR #45830 "make
    otel tracer respect envoy tracing decision"), and Envoy's decision reads x-request-id: a client's
    X-Request-ID that is not a UUID makes the request untraceable (measured too).
    use_request_id_for_trace_sampling false makes Envoy's decision "sampling" for every request and leaves
    x-request-id alone (envoyproxy.io/docs/envoy/v1.40.0/api-v3/extensions/request_id/uuid/v3/uuid.proto).
    """
    if collector_endpoint(config) is None:
        return None
    ratio = {"name": "envoy.tracers.opentelemetry.samplers.trace_id_ratio_based", "typed_config": {
        "@type": SAMPLERS_TYPE + "TraceIdRatioBasedSamplerConfig",
        "sampling_percentage": _fraction(config.logging.tracing.sampling_percent),
    }}
    return {
        "request_id_extension": {"typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
            "use_request_id_for_trace_sampling": False,
        }},
        "tracing": {
            # The router's own span per upstream attempt (the design's upstream_call), child of the request's.
            "spawn_upstream_span": True,
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": OTEL_CONFIG_TYPE,
                    "grpc_service": {"envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER}, "timeout": "1s"},
                    "service_name": SERVICE_NAME,
                    "sampler": {"name": "envoy.tracers.opentelemetry.samplers.parent_based", "typed_config": {
                        "@type": SAMPLERS_TYPE + "ParentBasedSamplerConfig",
                        "wrapped_sampler": ratio,
                    }},
                },
            },
        },
    }


def route_decorator(config: GatewayConfig) -> dict[str, Any] | None:
    """A route's `decorator` when tracing is on: names the request's span as the design's first stage, and is
    not sent upstream (propagate false: no x-envoy-decorator-operation header)."""
    if collector_endpoint(config) is None:
        return None
    return {"operation": GATEWAY_OPERATION, "propagate": False}


def collector_clusters(config: GatewayConfig) -> list[dict[str, Any]]:
    """The collector's cluster (HTTP/2, OTLP/gRPC), or none when tracing is off."""
    endpoint = collector_endpoint(config)
    if endpoint is None:
        return []
    host, port, tls = endpoint
    cluster: dict[str, Any] = {
        "name": COLLECTOR_CLUSTER,
        "type": "STATIC" if is_ip_address(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": HTTP2_OPTIONS,
        "load_assignment": load_assignment(COLLECTOR_CLUSTER, [(host, port, 1)]),
    }
    if tls:
        cluster["transport_socket"] = verified_tls_socket(host)
    return [cluster]


def tracing_runtime(config: GatewayConfig) -> dict[str, Any] | None:
    """The bootstrap's `layered_runtime` when tracing is on: Envoy's OpenTelemetry tracer sends its spans
    every flush interval (runtime key, default 5 s) or once MIN_FLUSH_SPANS are buffered (Envoy's default 5).
    The admin layer stays, so /runtime_modify still works."""
    if collector_endpoint(config) is None:
        return None
    return {"layers": [
        {"name": "outrider", "static_layer": {
            "tracing.opentelemetry.flush_interval_ms": config.logging.tracing.flush_interval_ms,
            "tracing.opentelemetry.min_flush_spans": MIN_FLUSH_SPANS}},
        {"name": "admin", "admin_layer": {}},
    ]}
