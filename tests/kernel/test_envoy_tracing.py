"""The compiled tracing: off without a collector, and when on the same tracer, sampler, collector cluster and
route decorator in the static bootstrap and in what xds_server serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format

from outrider.config import ConfigError, load_config_text
from outrider.config.model import GatewayConfig
from outrider.envoy_ads import compile_ads_bootstrap
from outrider.envoy_config import compile_bootstrap
from outrider.envoy_protos import check_bootstrap, to_proto
from outrider.envoy_tracing import COLLECTOR_CLUSTER
from outrider.tracing import sampled_traceparent
from xds_server.resources import SnapshotBuilder
from xds_server.snapshot import CLUSTER, LISTENER

EXAMPLE = Path(__file__).parents[2] / "examples" / "gateway.yaml"


def config_with(**tracing: Any) -> GatewayConfig:
    data = yaml.safe_load(EXAMPLE.read_text())
    if tracing:
        data.setdefault("logging", {})["tracing"] = tracing
    return load_config_text(yaml.safe_dump(data), str(EXAMPLE), base_dir=EXAMPLE.parent)


def hcm_of(listener: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][-1]["typed_config"]
    return hcm


def test_off_without_a_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    bootstrap = compile_bootstrap(config_with())
    assert "layered_runtime" not in bootstrap
    assert COLLECTOR_CLUSTER not in {c["name"] for c in bootstrap["static_resources"]["clusters"]}
    hcm = hcm_of(bootstrap["static_resources"]["listeners"][0])
    assert "tracing" not in hcm
    assert "decorator" not in str(hcm["route_config"])
    assert "request_id_extension" not in hcm


def test_on_from_the_standard_variable_in_both_bootstraps_and_xds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.observability:4317")
    config = config_with(sampling_percent=2.5)
    bootstrap = compile_bootstrap(config)
    check_bootstrap(bootstrap)  # parses, and names only clusters it defines (the collector's)
    assert bootstrap["layered_runtime"]["layers"][0]["static_layer"] == {
        "tracing.opentelemetry.flush_interval_ms": 1000, "tracing.opentelemetry.min_flush_spans": 512}
    to_proto(compile_ads_bootstrap(config), bootstrap_pb2.Bootstrap)
    assert compile_ads_bootstrap(config)["layered_runtime"] == bootstrap["layered_runtime"]
    collector = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == COLLECTOR_CLUSTER)
    assert collector["type"] == "STRICT_DNS"
    endpoint = collector["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert endpoint["socket_address"] == {"address": "collector.observability", "port_value": 4317}
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm = hcm_of(listener)
    assert hcm["tracing"]["provider"]["name"] == "envoy.tracers.opentelemetry"
    # The tracer samples: a parent's flag when there is one, else 2.5 % by trace id; Envoy's own decision
    # (from x-request-id) is "trace" for every request.
    sampler = hcm["tracing"]["provider"]["typed_config"]["sampler"]
    assert sampler["name"] == "envoy.tracers.opentelemetry.samplers.parent_based"
    assert sampler["typed_config"]["wrapped_sampler"]["typed_config"]["sampling_percentage"] == {
        "numerator": 25_000, "denominator": "MILLION"}
    assert hcm["request_id_extension"]["typed_config"]["use_request_id_for_trace_sampling"] is False
    routes = [r for r in hcm["route_config"]["virtual_hosts"][0]["routes"] if "route" in r]
    assert routes and all(r["decorator"] == {"operation": "gateway_receive", "propagate": False} for r in routes)

    # What xds_server serves: the same listener (but RDS), and the collector cluster in CDS.
    snapshot = SnapshotBuilder().build(config, "1")
    assert snapshot.consistent(), snapshot.inconsistencies()
    served = listener_pb2.Listener.FromString(snapshot.get(LISTENER)[listener["name"]].body)
    served_hcm = json_format.MessageToDict(served, preserving_proto_field_name=True)
    served_hcm = served_hcm["filter_chains"][0]["filters"][-1]["typed_config"]
    assert served_hcm["tracing"]["provider"]["typed_config"]["grpc_service"]["envoy_grpc"] == {
        "cluster_name": COLLECTOR_CLUSTER}
    static_hcm = json_format.MessageToDict(to_proto(listener, listener_pb2.Listener),
                                           preserving_proto_field_name=True)["filter_chains"][0]["filters"][-1]
    for key in ("tracing", "request_id_extension"):
        assert served_hcm[key] == static_hcm["typed_config"][key]
    served_collector = cluster_pb2.Cluster.FromString(snapshot.get(CLUSTER)[COLLECTOR_CLUSTER].body)
    assert served_collector == to_proto(collector, cluster_pb2.Cluster)


def test_the_config_endpoint_wins_and_a_bad_one_names_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-env:4317")
    bootstrap = compile_bootstrap(config_with(endpoint="https://10.0.0.9:4318"))
    collector = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == COLLECTOR_CLUSTER)
    assert collector["type"] == "STATIC" and "transport_socket" in collector
    with pytest.raises(ConfigError, match="endpoint"):
        config_with(endpoint="collector:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://nowhere")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        compile_bootstrap(config_with())


@pytest.mark.parametrize(("metadata", "sampled"), [
    ([("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")], True),
    ([("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")], False),
    ([("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-zz")], False),
    ([("traceparent", "garbage")], False),
    ([], False),
    (None, False),
])
def test_a_service_continues_only_a_sampled_context(metadata: Any, sampled: bool) -> None:
    assert (sampled_traceparent(metadata) is not None) == sampled


def test_a_tracer_that_cannot_be_set_up_turns_off_instead_of_failing_the_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The request path calls start(); an exporter that fails to import (two packages writing the same files,
    # tests/kernel/test_dependency_files.py) once answered every traced request with a 500.
    from outrider.tracing import ServiceTracer

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    tracer = ServiceTracer("ext_authz")

    def broken() -> None:
        raise ImportError("cannot import name 'InstrumentationScope'")

    monkeypatch.setattr(tracer, "_get_tracer", broken)
    sampled = [("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")]
    assert tracer.start("auth_validate", sampled) is None
    assert tracer.enabled is False
    assert tracer.start("auth_validate", sampled) is None
