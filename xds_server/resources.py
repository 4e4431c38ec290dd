"""Gateway config → xDS snapshot: the kernel compiler's resources split for ADS, serialized once and cached.

The static bootstrap and the xDS resources come from the same compiler (outrider.envoy_config); here
the listener's inline route table becomes an RDS reference and IP-only upstream clusters become EDS
clusters with a ClusterLoadAssignment each. outrider's own gRPC service clusters stay STATIC (sent over CDS).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2

from outrider.config.model import GatewayConfig, RouteConfig, UpstreamConfig
from outrider.envoy_config import (
    compile_http_filters,
    compile_listeners,
    compile_route_configuration,
    compile_route_group,
    compile_service_clusters,
    compile_upstream_cluster,
    head_routes,
)
from outrider.envoy_edge import allows_parameters_anywhere
from outrider.envoy_protos import cluster_references
from outrider.envoy_tracing import collector_clusters
from outrider.envoy_traffic import upstream_of
from xds_server import wire
from xds_server.fast_encode import serialize, serializer
from xds_server.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, Snapshot

ROUTE_CONFIG_NAME = "outrider_routes"
ADS_SOURCE = {"ads": {}, "resource_api_version": "V3"}
_VHOST_ROUTES = route_components_pb2.VirtualHost.DESCRIPTOR.fields_by_name["routes"].number
_RC_VHOSTS = route_pb2.RouteConfiguration.DESCRIPTOR.fields_by_name["virtual_hosts"].number
_ROUTE_TAG = wire.varint((_VHOST_ROUTES << 3) | 2)
_route_bytes = serializer(route_components_pb2.Route)
_NO_CLUSTERS: frozenset[str] = frozenset()


def xds_listener(listener: dict[str, Any]) -> dict[str, Any]:
    """A compiled listener whose HTTP connection managers take their routes over RDS (via ADS)."""
    out: dict[str, Any] = json.loads(json.dumps(listener))
    for chain in out["filter_chains"]:
        for net_filter in chain["filters"]:
            hcm = net_filter["typed_config"]
            if "route_config" in hcm:
                name = hcm.pop("route_config")["name"]
                hcm["rds"] = {"route_config_name": name, "config_source": ADS_SOURCE}
    return out


def split_eds(cluster: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A STATIC cluster → (EDS cluster, its ClusterLoadAssignment); DNS clusters stay as they are.

    EDS endpoints must be IP addresses (Envoy resolves no names in EDS), so STRICT_DNS keeps its inline
    endpoints.
    """
    if cluster.get("type") != "STATIC":
        return cluster, None
    eds = {k: v for k, v in cluster.items() if k != "load_assignment"}
    eds["type"] = "EDS"
    eds["eds_cluster_config"] = {"eds_config": ADS_SOURCE}
    return eds, cluster["load_assignment"]


class _RouteEntry(NamedTuple):  # made 10,000 times a cold build: a tuple is cheaper than a frozen dataclass
    route: RouteConfig
    upstream: UpstreamConfig | None
    tagged: bytes  # the route as a VirtualHost.routes field
    clusters: frozenset[str]


class _UpstreamEntry(NamedTuple):
    upstream: UpstreamConfig
    resources: tuple[tuple[str, Resource], ...]  # (type_url, resource)


def _same(a: object, b: object) -> bool:
    return a is b or a == b


# The services' own resources of one version: type URL → name → resource (see xds_server/app.py).
ServiceResources = Callable[[GatewayConfig, str], Mapping[str, Mapping[str, Resource]]]


def no_service_resources(config: GatewayConfig, version: str) -> Mapping[str, Mapping[str, Resource]]:
    return {}


class SnapshotBuilder:
    """Builds snapshots; routes and upstreams that did not change are reused from the last build.

    A route is reused when it, its upstream and every other config section (listeners, services, …
    which the per-route settings of the services may read) are unchanged. The services' resources come
    from `service_resources` (their plugins), built for every version.
    """

    def __init__(self, service_resources: ServiceResources = no_service_resources) -> None:
        self._service_resources = service_resources
        self._context: tuple[Any, ...] | None = None
        self._routes: dict[str, _RouteEntry] = {}
        self._upstreams: dict[str, _UpstreamEntry] = {}
        self._by_json: dict[tuple[str, str], Resource | bytes] = {}

    def build(self, config: GatewayConfig, version: str, previous: Snapshot | None = None) -> Snapshot:
        # A cold build allocates ~100,000 short-lived containers next to the config's ~100,000 long-lived
        # ones; the cycle collector running over them every few hundred allocations cost 3-8% of a 10,000-
        # route build. Nothing built here is cyclic garbage, and collection resumes right after.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._build(config, version, previous)
        finally:
            if paused:
                gc.enable()

    def _build(self, config: GatewayConfig, version: str, previous: Snapshot | None) -> Snapshot:
        # Per-route settings may also depend on what the routes enable together (e.g. whether a filter
        # is in the chain at all): the HTTP filter chain stands for that.
        context = (
            *(getattr(config, f) for f in type(config).model_fields if f not in ("routes", "upstreams")),
            json.dumps(compile_http_filters(config), sort_keys=True),
            # A route gets a `;` parameters guard when some other route allows them (outrider/envoy_edge.py).
            allows_parameters_anywhere(config),
        )
        if self._context is None or not _same(self._context, context):
            self._routes.clear()
            self._by_json.clear()
            self._context = context
        resources: dict[str, dict[str, Resource]] = {CLUSTER: {}, ENDPOINT: {}, LISTENER: {}, ROUTE: {}}
        for type_url, resource in self._upstream_resources(config):
            resources[type_url][resource.name] = resource
        for cluster in [*compile_service_clusters(config), *collector_clusters(config)]:
            for type_url, resource in self._cluster_resources(cluster, as_eds=False):
                resources[type_url][resource.name] = resource
        route_config = self._route_configuration(config)
        resources[ROUTE][route_config.name] = route_config
        for listener in compile_listeners(config, route_config={"name": ROUTE_CONFIG_NAME}):
            resource = self._listener(xds_listener(listener))
            resources[LISTENER][resource.name] = resource
        for type_url, items in self._service_resources(config, version).items():
            resources.setdefault(type_url, {}).update(items)
        return Snapshot.build(version, resources, previous)

    # --- listeners --------------------------------------------------------------------------------

    def _listener(self, listener: dict[str, Any]) -> Resource:
        key = (LISTENER, json.dumps(listener, sort_keys=True))
        cached = self._by_json.get(key)
        if isinstance(cached, Resource):
            return cached
        body = serialize(listener, listener_pb2.Listener)
        refs = {(CLUSTER, name) for name in cluster_references(listener)}
        refs |= {(ROUTE, ROUTE_CONFIG_NAME)}
        resource = Resource.of(listener["name"], body, frozenset(refs))
        self._by_json[key] = resource
        return resource

    # --- routes -----------------------------------------------------------------------------------

    def _route_entry(self, route: RouteConfig, config: GatewayConfig) -> _RouteEntry:
        upstream = upstream_of(route, config) if route.upstream is not None else None
        entry = self._routes.get(route.name)
        if entry is not None and _same(entry.route, route) and _same(entry.upstream, upstream):
            return entry
        *guards, compiled = compile_route_group(route, config)
        body = _route_bytes(compiled)
        action = compiled.get("route")
        n = len(body)
        return _RouteEntry(
            route,
            upstream,
            b"".join(self._tagged_route(g) for g in guards)
            + _ROUTE_TAG + (wire.SMALL[n] if n < 16384 else wire.varint(n)) + body,
            frozenset(cluster_references(action)) if action is not None else _NO_CLUSTERS,
        )

    def _tagged_route(self, route: dict[str, Any]) -> bytes:
        key = ("route", json.dumps(route, sort_keys=True))
        cached = self._by_json.get(key)
        if isinstance(cached, bytes):
            return cached
        body = serialize(route, route_components_pb2.Route)
        tagged = wire.field(_VHOST_ROUTES, body)
        self._by_json[key] = tagged
        return tagged

    def _route_configuration(self, config: GatewayConfig) -> Resource:
        """The compiler's route configuration, with the config's routes spliced in before the catch-all."""
        route_entry = self._route_entry
        entries = {route.name: route_entry(route, config) for route in config.routes}
        self._routes = entries
        shell = compile_route_configuration(config, ROUTE_CONFIG_NAME, with_routes=False)
        (vhost,) = shell["virtual_hosts"]
        n_head = len(head_routes(config))
        head = b"".join(self._tagged_route(r) for r in vhost["routes"][:n_head])
        tail = b"".join(self._tagged_route(r) for r in vhost["routes"][n_head:])
        vhost_head = self._head(
            ROUTE, {k: v for k, v in vhost.items() if k != "routes"}, route_components_pb2.VirtualHost
        )
        rc_head = self._head(
            ROUTE, {k: v for k, v in shell.items() if k != "virtual_hosts"}, route_pb2.RouteConfiguration
        )
        vhost_body = b"".join([vhost_head, head, *[e.tagged for e in entries.values()], tail])
        body = rc_head + wire.field(_RC_VHOSTS, vhost_body)
        names = set(cluster_references(vhost["routes"])).union(*[e.clusters for e in entries.values()])
        refs = frozenset((CLUSTER, name) for name in names)
        return Resource.of(ROUTE_CONFIG_NAME, body, refs)

    def _head(self, kind: str, part: dict[str, Any], message: Any) -> bytes:
        key = (kind + message.DESCRIPTOR.name, json.dumps(part, sort_keys=True))
        cached = self._by_json.get(key)
        if isinstance(cached, bytes):
            return cached
        body = serialize(part, message)
        self._by_json[key] = body
        return body

    # --- clusters and endpoints -------------------------------------------------------------------

    def _upstream_resources(self, config: GatewayConfig) -> list[tuple[str, Resource]]:
        entries = {}
        out: list[tuple[str, Resource]] = []
        for upstream in config.upstreams:
            entry = self._upstreams.get(upstream.name)
            if entry is None or not _same(entry.upstream, upstream):
                entry = _UpstreamEntry(
                    upstream, tuple(self._cluster_resources(compile_upstream_cluster(upstream)))
                )
            entries[upstream.name] = entry
            out.extend(entry.resources)
        self._upstreams = entries
        return out

    def _cluster_resources(self, cluster: dict[str, Any], as_eds: bool = True) -> list[tuple[str, Resource]]:
        eds, assignment = split_eds(cluster) if as_eds else (cluster, None)
        body = serialize(eds, cluster_pb2.Cluster)
        if assignment is None:
            return [(CLUSTER, Resource.of(eds["name"], body))]
        cla = serialize(assignment, endpoint_pb2.ClusterLoadAssignment)
        return [
            (CLUSTER, Resource.of(eds["name"], body, frozenset({(ENDPOINT, eds["name"])}))),
            (ENDPOINT, Resource.of(assignment["cluster_name"], cla)),
        ]
