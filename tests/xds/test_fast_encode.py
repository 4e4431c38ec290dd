"""The fast encoder (xds_server/fast_encode.py) writes what json_format.ParseDict + deterministic
serialization writes, for every resource the compiler emits; other shapes fall back to json_format."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from outrider.config import GatewayConfig, config_from_data
from outrider.envoy_config import (
    compile_bootstrap,
    compile_listeners,
    compile_route,
    compile_route_configuration,
    compile_service_clusters,
    compile_upstream_cluster,
)
from outrider.envoy_protos import CompileError, known_type, to_proto
from tests.harness import example_config_dict
from tests.xds.conftest import gateway
from tests.xds.test_resources import EXTRA_ROUTES, EXTRA_UPSTREAMS
from xds_server import fast_encode
from xds_server.fast_encode import Unsupported
from xds_server.resources import ROUTE_CONFIG_NAME, SnapshotBuilder, split_eds, xds_listener


def _canonical(message: Message) -> Message:
    """The message with every nested Any re-packed deterministically, in place.

    ParseDict packs an Any without deterministic serialization, so a map inside one (ext_authz's
    context_extensions) comes out in hash order; the fast encoder sorts it like any other map.
    """
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                for item in value.values():
                    _canonical(item)
        elif field.is_repeated:
            for item in value:
                _canonical(item)
        else:
            _canonical(value)
    if message.DESCRIPTOR.full_name == "google.protobuf.Any":
        descriptor = known_type(message.type_url)  # type: ignore[attr-defined]
        assert descriptor is not None, message.type_url  # type: ignore[attr-defined]
        inner = message_factory.GetMessageClass(descriptor).FromString(message.value)  # type: ignore[attr-defined]
        message.value = _canonical(inner).SerializeToString(deterministic=True)  # type: ignore[attr-defined]
    return message


def assert_same_bytes(resource: dict[str, Any], message: type[Message]) -> None:
    fast = fast_encode.encode(resource, message)  # the fast path itself: Unsupported fails the test
    reference = _canonical(to_proto(resource, message))
    assert fast == reference.SerializeToString(deterministic=True), resource.get("name", resource)
    assert message.FromString(fast) == reference


def resources_of(config: GatewayConfig) -> Iterator[tuple[dict[str, Any], type[Message]]]:
    """Every resource dict the static bootstrap and the xDS snapshot are made from."""
    yield compile_bootstrap(config), bootstrap_pb2.Bootstrap  # inline route table in the HCM's Any
    for route in config.routes:
        yield compile_route(route, config), route_components_pb2.Route
    shell = compile_route_configuration(config, ROUTE_CONFIG_NAME, with_routes=False)
    yield shell, route_pb2.RouteConfiguration
    for listener in compile_listeners(config, route_config={"name": ROUTE_CONFIG_NAME}):
        yield xds_listener(listener), listener_pb2.Listener
    for cluster in compile_service_clusters(config):
        yield cluster, cluster_pb2.Cluster
    for upstream in config.upstreams:
        eds, assignment = split_eds(compile_upstream_cluster(upstream))
        yield eds, cluster_pb2.Cluster
        if assignment is not None:
            yield assignment, endpoint_pb2.ClusterLoadAssignment


def featured_gateway(n_routes: int, n_upstreams: int) -> GatewayConfig:
    """The whole example (every service's filters and per-route settings) plus n routes and upstreams
    cycling through every route and upstream feature the compiler knows."""
    data = example_config_dict()
    data["auth"]["providers"][0].pop("jwks_file")
    data["auth"]["providers"][0]["jwks_url"] = "https://keys.example/jwks.json"
    upstream_variants: list[dict[str, Any]] = [
        {"endpoints": [{"address": "10.0.0.1", "port": 80, "weight": 3}, {"address": "10.0.0.2", "port": 80}]},
        {"lb_policy": "least_request", "connect_timeout_ms": 250,
         "circuit_breaker": {"max_connections": 1, "max_pending_requests": 2, "max_requests": 3, "max_retries": 1},
         "endpoints": [{"address": "::1", "port": 8080}]},
        {"lb_policy": "random", "endpoints": [{"address": "127.0.0.1", "port": 1}],
         "outlier_detection": {"consecutive_5xx": 1, "consecutive_gateway_failure": 2, "interval_ms": 1,
                               "base_ejection_time_ms": 1, "max_ejection_percent": 0}},
        {"lb_policy": "ring_hash", "endpoints": [{"address": "127.0.0.1", "port": 2}],
         "hash_policy": [{"header": "x-user"}, {"cookie": {"name": "sticky", "ttl_s": 0, "path": "/"}},
                         {"cookie": {"name": "c2", "ttl_s": 3600}}, {"source_ip": True, "terminal": True}]},
        {"lb_policy": "maglev", "endpoints": [{"address": "127.0.0.1", "port": 3}], "hash_policy": [{"header": "x"}],
         "health_check": {"path": "/hc", "host": "svc.internal", "expected_statuses": [200, 204],
                          "interval_ms": 1500, "timeout_ms": 1, "unhealthy_threshold": 3, "healthy_threshold": 2}},
        {"endpoints": [{"address": "backend.internal", "port": 443}]},  # STRICT_DNS: endpoints stay inline
    ]
    upstreams = [{"name": f"u-{i}", **upstream_variants[i % len(upstream_variants)]} for i in range(n_upstreams)]
    route_variants: list[dict[str, Any]] = [
        {"match": {"prefix": "/p/{i}/"}, "public": True, "idle_timeout_ms": 1,
         "retry": {"retry_on": ["5xx", "reset", "retriable-status-codes"], "num_retries": 3, "per_try_timeout_ms": 250,
                   "retriable_status_codes": [502, 503], "backoff_base_ms": 25, "backoff_max_ms": 250}},
        {"match": {"path": "/exact/{i}", "headers": [
            {"name": "x-a", "exact": ""}, {"name": "x-b", "prefix": "p"}, {"name": "x-c", "regex": "^v[0-9]+$"},
            {"name": "x-d", "present": True, "invert": True}]},
         "resource": "profile", "rewrite": {"prefix": "/", "host": "internal.example"}, "timeout_ms": 600_000},
        {"match": {"regex": "^/re/{i}/[a-z]+$"}, "public": True,
         "rewrite": {"regex": {"pattern": "^/re/", "substitution": ""}}},
        {"match": {"prefix": "/cors/{i}/"}, "resource": "messages",
         "cors": {"allow_origins": ["https://b.example", "https://app.example"], "allow_methods": ["GET"],
                  "allow_headers": [],
                  "expose_headers": ["x-id", "x-b"], "max_age_s": 0, "allow_credentials": True}},
        {"match": {"prefix": "/cors2/{i}/"}, "public": True, "cors": {"allow_origins": ["*"]}},
        {"match": {"path": "/direct/{i}"}, "direct_response": {"status": 418, "body": ""}},
        {"match": {"prefix": "/t/{i}/"}, "resource": "files", "transformations": {
            "request": {"add_headers": {"X-Static": "1", "X-Opt": {"value": "v", "if_absent": True}},
                        "remove_headers": ["X-Drop"], "rename_headers": {"X-Old": "X-New"}},
            "response": {"add_headers": {"X-Resp": "r"}, "remove_headers": ["Server"]}}},
        {"match": {"prefix": "/api/v1/chat/"}, "resource": "messages"},  # a rate-limited endpoint
        {"match": {"prefix": "/api/v1/search"}, "public": True, "cache": {"enabled": False}},
        {"match": {"prefix": "/nt/{i}/"}, "public": True, "transformations": {"enabled": False}},
    ]
    routes = []
    for i in range(n_routes):
        variant = route_variants[i % len(route_variants)]
        route: dict[str, Any] = {"name": f"r-{i}", **variant, "match": {
            k: (v.replace("{i}", str(i)) if isinstance(v, str) else v) for k, v in variant["match"].items()}}
        if "direct_response" not in route:
            route["upstream"] = f"u-{i % n_upstreams}"
        routes.append(route)
    data["routes"].extend(routes)
    data["upstreams"].extend(upstreams)
    return config_from_data(data)


@pytest.mark.parametrize("full", [False, True], ids=["routing", "whole-example"])
def test_example_resources_encode_as_json_format_does(full: bool) -> None:
    config = gateway(EXTRA_ROUTES, EXTRA_UPSTREAMS, full=full)
    for resource, message in resources_of(config):
        assert_same_bytes(resource, message)


def test_generated_config_with_every_feature_encodes_as_json_format_does() -> None:
    config = featured_gateway(10_000, 1_000)
    count = 0
    for resource, message in resources_of(config):
        assert_same_bytes(resource, message)
        count += 1
    assert count > 11_500


def test_snapshot_bytes_do_not_depend_on_the_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    config = featured_gateway(200, 30)
    fast = SnapshotBuilder().build(config, "1")

    def slow(message: type[Message]) -> Any:
        return lambda resource: _canonical(to_proto(resource, message)).SerializeToString(deterministic=True)

    def slow_one(resource: dict[str, Any], message: type[Message]) -> bytes:
        return slow(message)(resource)  # type: ignore[no-any-return]

    monkeypatch.setattr("xds_server.resources.serialize", slow_one)
    monkeypatch.setattr("xds_server.resources._route_bytes", slow(route_components_pb2.Route))
    reference = SnapshotBuilder().build(config, "1")
    for type_url, resources in reference.resources.items():
        assert {n: r.body for n, r in fast.get(type_url).items()} == {n: r.body for n, r in resources.items()}


def test_structs_encode_as_json_format_does() -> None:
    # A direct response's json_format body (the path policy's 400) and metadata are Structs.
    assert_same_bytes({"name": "c", "metadata": {"filter_metadata": {"a": {"k": "v", "n": 1.5, "l": [True, None],
                                                                          "z": {"y": "x"}}}}}, cluster_pb2.Cluster)
    assert_same_bytes({"name": "r", "match": {"prefix": "/"}, "direct_response": {"status": 400, "body_format": {
        "json_format": {"error": "e", "request_id": "%REQ(X-REQUEST-ID)%"}}}}, route_components_pb2.Route)


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        ({"name": "c", "cluster_type": {"name": "x", "typed_config": {
            "@type": "type.googleapis.com/google.protobuf.Struct", "value": {}}}}, cluster_pb2.Cluster),
        ({"name": "c", "metadata": {"filter_metadata": {"a": ["not", "an", "object"]}}}, cluster_pb2.Cluster),
        ({"name": "r", "match": {"prefix": "/", "path": "/"}}, route_components_pb2.Route),  # two of a oneof
        ({"name": "r", "matcher": {}}, route_components_pb2.Route),  # unknown field
        ({"name": "c", "connectTimeout": "1s", "connect_timeout": "2s"}, cluster_pb2.Cluster),  # both names
        ({"name": 5}, route_components_pb2.Route),
        ({"cluster_name": "c", "endpoints": [{"priority": "1"}]}, endpoint_pb2.ClusterLoadAssignment),  # "1": JSON
        ({"name": "c", "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}}}, cluster_pb2.Cluster),
        ({"name": "c", "lb_policy": "NO_SUCH_POLICY"}, cluster_pb2.Cluster),
        ({"name": "c", "connect_timeout": "soon"}, cluster_pb2.Cluster),
        ({"name": "r", "route": {"cluster": "c", "timeout": None}}, route_components_pb2.Route),
    ],
)
def test_other_shapes_fall_back_to_json_format(resource: dict[str, Any], message: type[Message]) -> None:
    with pytest.raises(Unsupported):
        fast_encode.encode(resource, message)
    try:
        want: bytes | type[CompileError] = to_proto(resource, message).SerializeToString(deterministic=True)
    except CompileError:
        want = CompileError
    if want is CompileError:
        with pytest.raises(CompileError):
            fast_encode.serialize(resource, message)
    else:
        assert fast_encode.serialize(resource, message) == want


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        # proto3 defaults are left out, but not on fields with presence (oneof members, messages, wrappers).
        ({"name": "", "max_requests_per_connection": 0, "connect_timeout": "0s", "respect_dns_ttl": False,
          "lb_policy": "ROUND_ROBIN", "common_lb_config": {"healthy_panic_threshold": {"value": 50}},
          "per_connection_buffer_limit_bytes": "12",
          "circuit_breakers": {"thresholds": [{"max_connections": 0, "priority": 0}]}}, cluster_pb2.Cluster),
        ({"name": "r", "match": {"path": ""}, "direct_response": {"status": 200, "body": {"inline_string": ""}},
          "request_headers_to_remove": []}, route_components_pb2.Route),
        ({"name": "c", "lbPolicy": 2, "dnsLookupFamily": "V4_ONLY", "connectTimeout": "-1.5s",
          "outlier_detection": {"consecutive_5xx": 4294967295}, "type": "STRICT_DNS"}, cluster_pb2.Cluster),
        ({"name": "r", "match": {"prefix": "/", "headers": [{"name": "x", "range_match": {"start": -5, "end": 9}}]},
          "route": {"cluster": "c", "retry_policy": {"retriable_status_codes": [500, 503, 1]},
                    "max_stream_duration": {"grpc_timeout_header_offset": "0.000000001s"}},
          "typed_per_filter_config": {"b": {"@type": "type.googleapis.com/envoy.extensions.filters.http"
                                                      ".ext_authz.v3.ExtAuthzPerRoute",
                                            "check_settings": {"context_extensions": {"z": "", "a": "1"}}},
                                      "a": {"@type": "type.googleapis.com/envoy.extensions.filters.http"
                                                      ".ext_authz.v3.ExtAuthzPerRoute"}}},
         route_components_pb2.Route),
        ({"cluster_name": "x" * 20_000, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "é" * 100, "port_value": 65535}}}, "load_balancing_weight": 1}],
            "load_balancing_weight": 0, "priority": 1}]}, endpoint_pb2.ClusterLoadAssignment),
    ],
)
def test_edge_values_encode_as_json_format_does(resource: dict[str, Any], message: type[Message]) -> None:
    assert_same_bytes(resource, message)
