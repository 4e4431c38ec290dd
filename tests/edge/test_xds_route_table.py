"""The control plane serves the same route table as the static compiler: the path policy routes first, and a
`;` parameters guard in front of every other route once some route allows parameters (a rebuild that flips
one route's setting rebuilds the guards of all, though the other routes did not change)."""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from outrider.config import GatewayConfig
from outrider.envoy_config import compile_route_configuration
from outrider.envoy_protos import to_proto
from tests.xds.conftest import gateway
from xds_server.resources import ROUTE_CONFIG_NAME, SnapshotBuilder
from xds_server.snapshot import ROUTE


def _served(builder: SnapshotBuilder, config: GatewayConfig, version: str) -> route_pb2.RouteConfiguration:
    body = builder.build(config, version).get(ROUTE)[ROUTE_CONFIG_NAME].body
    return route_pb2.RouteConfiguration.FromString(body)


def _static(config: GatewayConfig) -> route_pb2.RouteConfiguration:
    message = to_proto(compile_route_configuration(config, ROUTE_CONFIG_NAME), route_pb2.RouteConfiguration)
    assert isinstance(message, route_pb2.RouteConfiguration)
    return message


def _names(rc: route_pb2.RouteConfiguration) -> list[str]:
    return [r.name for r in rc.virtual_hosts[0].routes]


def _dict(rc: route_pb2.RouteConfiguration) -> dict[str, Any]:
    return json_format.MessageToDict(rc, preserving_proto_field_name=True)


def test_policy_routes_and_guards_are_served_as_compiled() -> None:
    plain = gateway()
    legacy = {"name": "legacy", "match": {"prefix": "/legacy/"}, "upstream": "demo", "public": True,
              "allow_path_parameters": True}
    opted = gateway(routes=[legacy])
    builder = SnapshotBuilder()

    first = _served(builder, plain, "1")
    assert _dict(first) == _dict(_static(plain))
    names = _names(first)
    assert names[:4] == ["outrider-path-encoded_ascii", "outrider-path-encoded_utf8", "outrider-path-raw",
                         "outrider-path-path_parameters"]
    assert not any(":" in n for n in names)  # no guards while no route allows parameters

    second = _served(builder, opted, "2")  # the same builder: cached routes must not keep their old form
    assert _dict(second) == _dict(_static(opted))
    names = _names(second)
    assert "outrider-path-path_parameters" not in names
    upstream_routes = [r.name for r in opted.routes if r.upstream is not None and not r.allow_path_parameters]
    for name in upstream_routes:
        assert names[names.index(name) - 1] == f"outrider-path-parameters:{name}"
    assert names[names.index("legacy") - 1] != "outrider-path-parameters:legacy"

    third = _served(builder, plain, "3")
    assert _dict(third) == _dict(first)
