"""Gateway config → xDS resources: the same compiler as the static bootstrap, split for ADS, cached."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from outrider.envoy_config import compile_bootstrap
from outrider.envoy_protos import CompileError, to_proto
from tests.xds.conftest import big_gateway, gateway
from xds_server import wire
from xds_server.protocol import DeltaResponse, SotwResponse
from xds_server.resources import SnapshotBuilder
from xds_server.service import ResponseEncoder
from xds_server.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource

EXTRA_UPSTREAMS = [
    {
        "name": "sticky",
        "lb_policy": "ring_hash",
        "hash_policy": [{"header": "x-user"}, {"source_ip": True}],
        "endpoints": [{"address": "127.0.0.1", "port": 9001, "weight": 4}, {"address": "127.0.0.1", "port": 9002}],
        "circuit_breaker": {"max_connections": 10, "max_pending_requests": 5, "max_requests": 20, "max_retries": 2},
        "outlier_detection": {"consecutive_5xx": 3, "base_ejection_time_ms": 5000},
        "health_check": {"path": "/healthz", "interval_ms": 1000, "timeout_ms": 500},
    },
    {"name": "by-name", "endpoints": [{"address": "localhost", "port": 9003}]},
]
EXTRA_ROUTES = [
    {
        "name": "rich",
        "match": {
            "prefix": "/rich/",
            "headers": [{"name": "x-canary", "exact": "1"}, {"name": "x-debug", "present": True, "invert": True}],
        },
        "upstream": "sticky",
        "public": True,
        "rewrite": {"prefix": "/", "host": "internal"},
        "retry": {"retry_on": ["5xx", "connect-failure"], "num_retries": 2, "per_try_timeout_ms": 500},
        "idle_timeout_ms": 30000,
        "cors": {"allow_origins": ["https://app.example"], "allow_credentials": True, "expose_headers": ["x-id"]},
    },
    {
        "name": "dns",
        "match": {"regex": "^/dns/[a-z]+$"},
        "upstream": "by-name",
        "public": True,
        "rewrite": {"regex": {"pattern": "^/dns/", "substitution": "/"}},
    },
]


def _dict(message: Any) -> dict[str, Any]:
    # Plain dicts: MessageToDict's OrderedDicts would compare key order too.
    out: dict[str, Any] = json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))
    return out


@pytest.mark.parametrize("full", [False, True], ids=["routing", "whole-example"])
def test_xds_resources_equal_the_static_bootstrap(full: bool) -> None:
    # whole-example: with every service's filters and per-route settings (rate limits, ext_proc, ...).
    config = gateway(EXTRA_ROUTES, EXTRA_UPSTREAMS, full=full)
    static = to_proto(compile_bootstrap(config), bootstrap_pb2.Bootstrap).static_resources
    snapshot = SnapshotBuilder().build(config, "1")
    assert snapshot.consistent(), snapshot.inconsistencies()
    # Clusters: the EDS ones with their endpoints put back are the static clusters.
    clusters = []
    for name, resource in snapshot.get(CLUSTER).items():
        cluster = cluster_pb2.Cluster.FromString(resource.body)
        if cluster.type == cluster_pb2.Cluster.EDS:
            cluster.type = cluster_pb2.Cluster.STATIC
            cluster.ClearField("eds_cluster_config")
            cluster.load_assignment.CopyFrom(
                endpoint_pb2.ClusterLoadAssignment.FromString(snapshot.get(ENDPOINT)[name].body)
            )
        clusters.append(cluster)
    assert sorted(clusters, key=lambda c: c.name) == sorted(static.clusters, key=lambda c: c.name)
    # Listeners: the RDS reference with the route configuration put back inline is the static listener.
    (route_config,) = snapshot.get(ROUTE).values()
    (want,) = static.listeners
    got = listener_pb2.Listener.FromString(snapshot.get(LISTENER)[want.name].body)
    got_hcm = _dict(got.filter_chains[0].filters[-1].typed_config)
    want_hcm = _dict(want.filter_chains[0].filters[-1].typed_config)
    assert got_hcm.pop("rds")["route_config_name"] == want_hcm["route_config"]["name"]
    got_hcm["route_config"] = _dict(route_config_pb(route_config.body))
    assert got_hcm == want_hcm
    got.filter_chains[0].filters[-1].ClearField("typed_config")
    want.filter_chains[0].filters[-1].ClearField("typed_config")
    assert got == want


def route_config_pb(body: bytes) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration.FromString(body)


def test_traffic_settings_compile_to_envoy_fields() -> None:
    snapshot = SnapshotBuilder().build(gateway(EXTRA_ROUTES, EXTRA_UPSTREAMS), "1")
    rc = route_pb2.RouteConfiguration.FromString(snapshot.get(ROUTE)["outrider_routes"].body)
    routes = {r.name: r for r in rc.virtual_hosts[0].routes}
    rich = json_format.MessageToDict(routes["rich"], preserving_proto_field_name=True)
    assert rich["match"]["headers"] == [
        {"name": "x-canary", "string_match": {"exact": "1"}},
        {"name": "x-debug", "present_match": True, "invert_match": True},
    ]
    action = rich["route"]
    assert action["prefix_rewrite"] == "/" and action["host_rewrite_literal"] == "internal"
    assert action["retry_policy"] == {"retry_on": "5xx,connect-failure", "num_retries": 2, "per_try_timeout": "0.500s"}
    assert action["idle_timeout"] == "30s"
    assert action["hash_policy"] == [
        {"header": {"header_name": "x-user"}},
        {"connection_properties": {"source_ip": True}},
    ]
    cors = rich["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert cors["allow_origin_string_match"] == [{"exact": "https://app.example"}]
    assert cors["allow_credentials"] is True
    dns = json_format.MessageToDict(routes["dns"], preserving_proto_field_name=True)
    assert dns["route"]["regex_rewrite"] == {"pattern": {"regex": "^/dns/"}, "substitution": "/"}

    sticky = json_format.MessageToDict(
        cluster_pb2.Cluster.FromString(snapshot.get(CLUSTER)["sticky"].body), preserving_proto_field_name=True
    )
    assert sticky["type"] == "EDS" and sticky["lb_policy"] == "RING_HASH"
    assert sticky["circuit_breakers"]["thresholds"] == [
        {"max_connections": 10, "max_pending_requests": 5, "max_requests": 20, "max_retries": 2}
    ]
    assert sticky["outlier_detection"]["consecutive_5xx"] == 3
    assert sticky["health_checks"][0]["http_health_check"]["path"] == "/healthz"
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(snapshot.get(ENDPOINT)["sticky"].body)
    assert [e.load_balancing_weight.value for e in cla.endpoints[0].lb_endpoints] == [4, 1]
    # Hostnames cannot go through EDS: that cluster keeps its DNS type and inline endpoints.
    by_name = cluster_pb2.Cluster.FromString(snapshot.get(CLUSTER)["by-name"].body)
    assert by_name.type == cluster_pb2.Cluster.STRICT_DNS and "by-name" not in snapshot.get(ENDPOINT)


def test_listener_takes_routes_over_ads_and_service_clusters_stay_static() -> None:
    snapshot = SnapshotBuilder().build(gateway(), "1")
    listener = listener_pb2.Listener.FromString(snapshot.get(LISTENER)["public"].body)
    hcm = json_format.MessageToDict(listener.filter_chains[0].filters[-1].typed_config,
                                    preserving_proto_field_name=True)
    assert hcm["rds"] == {
        "route_config_name": "outrider_routes",
        "config_source": {"ads": {}, "resource_api_version": "V3"},
    }
    filters = [f["name"] for f in hcm["http_filters"]]
    assert filters.index("envoy.filters.http.cors") < filters.index("envoy.filters.http.ext_authz")
    authz = cluster_pb2.Cluster.FromString(snapshot.get(CLUSTER)["outrider_ext_authz"].body)
    assert authz.type == cluster_pb2.Cluster.STATIC


def test_rebuild_reuses_unchanged_routes_and_changes_one() -> None:
    config = big_gateway(500, 50)
    builder = SnapshotBuilder()
    first = builder.build(config, "1")
    routes = list(config.routes)
    routes[7] = routes[7].model_copy(update={"timeout_ms": 1234})
    second = builder.build(config.model_copy(update={"routes": routes}), "2", first)
    assert second.type_versions == {CLUSTER: "1", ENDPOINT: "1", LISTENER: "1", ROUTE: "2"}
    fresh = SnapshotBuilder().build(config.model_copy(update={"routes": routes}), "2", first)
    assert fresh.get(ROUTE)["outrider_routes"].body == second.get(ROUTE)["outrider_routes"].body
    rc = route_pb2.RouteConfiguration.FromString(second.get(ROUTE)["outrider_routes"].body)
    by_name = {r.name: r for r in rc.virtual_hosts[0].routes}
    assert by_name[routes[7].name].route.timeout.ToMilliseconds() == 1234
    assert rc.virtual_hosts[0].routes[-1].name == "outrider-not-found"


def test_invalid_envoy_field_is_a_compile_error() -> None:
    with pytest.raises(CompileError, match="no_such_field"):
        to_proto({"name": "x", "no_such_field": 1}, cluster_pb2.Cluster)


def test_encoded_responses_parse_back() -> None:
    resources = (Resource.of("a", b"\x0a\x01a"), Resource.of("b", b"\x0a\x01b"))
    encoder = ResponseEncoder()
    sotw = discovery_pb2.DiscoveryResponse.FromString(encoder.encode(SotwResponse(CLUSTER, "7", "n1", resources, "7")))
    assert (sotw.version_info, sotw.nonce, sotw.type_url) == ("7", "n1", CLUSTER)
    assert [cluster_pb2.Cluster.FromString(r.value).name for r in sotw.resources] == ["a", "b"]
    again = discovery_pb2.DiscoveryResponse.FromString(encoder.encode(SotwResponse(CLUSTER, "7", "n2", resources, "7")))
    assert again.nonce == "n2" and again.resources == sotw.resources
    delta = discovery_pb2.DeltaDiscoveryResponse.FromString(
        encoder.encode(DeltaResponse(CLUSTER, "7", "n3", resources[:1], ("gone",), "7"))
    )
    assert delta.resources[0].name == "a" and delta.resources[0].version == resources[0].version
    assert list(delta.removed_resources) == ["gone"] and delta.nonce == "n3"
    assert wire.varint(300) == b"\xac\x02"
