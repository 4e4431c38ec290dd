"""Two dependencies write the same files: xds-protos ships an older copy of opentelemetry/proto/ than the
opentelemetry-proto the OTLP exporter needs. Whichever pip installs last wins, so `make install` reinstalls
opentelemetry-proto last; these tests fail when the older copy won (every traced request once failed with
ImportError: cannot import name 'InstrumentationScope')."""

from __future__ import annotations


def test_the_exporter_finds_the_opentelemetry_proto_it_was_built_for() -> None:
    from opentelemetry.proto.common.v1 import common_pb2

    assert hasattr(common_pb2, "InstrumentationScope")
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: F401


def test_envoys_opentelemetry_messages_still_load_on_the_newer_files() -> None:
    # Envoy's tracer and access-logger configs import opentelemetry/proto/common; they must load with it.
    from envoy.config.trace.v3 import opentelemetry_pb2

    assert opentelemetry_pb2.OpenTelemetryConfig.DESCRIPTOR.full_name == "envoy.config.trace.v3.OpenTelemetryConfig"
