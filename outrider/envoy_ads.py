"""The small Envoy bootstrap for xDS: node, admin, and one static cluster pointing at xds_server over ADS."""

from __future__ import annotations

from typing import Any

from outrider.addresses import is_ip_address
from outrider.config.model import GatewayConfig
from outrider.envoy_contribution import HTTP2_OPTIONS
from outrider.envoy_edge import overload_manager
from outrider.envoy_tracing import tracing_runtime

XDS_CLUSTER = "outrider_xds"
# Health of each replica on its own ADS service name (xds_server reports it through grpc.health.v1).
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def _host_port(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


def _xds_endpoints(servers: list[str]) -> dict[str, Any]:
    """The xds cluster's endpoints: one replica per priority level, in the order given.

    Envoy sends everything to the highest priority level that has healthy hosts, and spills to the next one
    only as the level becomes unhealthy (https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/
    upstream/load_balancing/priority): with one replica per level the ADS stream goes to the first healthy
    replica in order, like the services' --xds list. When the stream breaks, Envoy's gRPC mux opens a new
    one after retry_back_off, through the cluster's load balancer, so it lands on the next healthy replica.
    """
    levels: list[dict[str, Any]] = []
    for index, server in enumerate(servers):
        host, port = _host_port(server)
        level: dict[str, Any] = {"priority": index} if index else {}  # 0 is the default: left out
        level["lb_endpoints"] = [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]
        levels.append(level)
    return {"cluster_name": XDS_CLUSTER, "endpoints": levels}


def _ads_source() -> dict[str, Any]:
    # A fresh dict each time: shared ones would come out of yaml.safe_dump as anchors and aliases.
    return {"ads": {}, "resource_api_version": "V3"}


def compile_ads_bootstrap(config: GatewayConfig, delta: bool | None = None) -> dict[str, Any]:
    """Everything else (listeners, routes, clusters, endpoints) comes from xds_server.

    `delta` picks incremental xDS (DELTA_GRPC) over state of the world; None follows services.xds.protocol.
    """
    xds = config.services.xds
    use_delta = xds.protocol == "delta" if delta is None else delta
    servers = xds.ads_servers()
    static = all(is_ip_address(_host_port(s)[0]) for s in servers)
    xds_cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        # Names (a Kubernetes Service; a headless one lists every pod) are resolved by DNS, every address an
        # endpoint.
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": HTTP2_OPTIONS,
        "load_assignment": _xds_endpoints(servers),
    }
    if len(servers) > 1 or not static:
        # A replica that is killed (no FIN) or hangs must leave the load balancer at once, so the next
        # stream goes to another replica: active gRPC health checks every second, one failure is enough
        # (https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/health_checking).
        # Not for one address: there is nowhere else to go, and the committed single-server bootstrap stays
        # as it was.
        xds_cluster["health_checks"] = [{
            "timeout": "1s", "interval": "1s", "no_traffic_interval": "1s",
            "unhealthy_threshold": 1, "healthy_threshold": 1,
            "grpc_health_check": {"service_name": ADS_SERVICE},
        }]
    tls = xds.tls
    if tls is not None and tls.client_cert_file is not None and tls.client_key_file is not None:
        # mTLS to the control plane: Envoy presents the gateway's client certificate and checks the control
        # plane's name. (Static files: Envoy reads them at start; rotate by restarting Envoy or use SDS.)
        xds_cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.server_name,
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": str(tls.client_cert_file)},
                                      "private_key": {"filename": str(tls.client_key_file)}}],
                "validation_context": {
                    "trusted_ca": {"filename": str(tls.server_ca_file or tls.client_ca_file)},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": tls.server_name}}],
                },
            },
        }}
    return {
        "node": {"id": xds.node_id, "cluster": xds.node_cluster},
        "admin": {"address": {"socket_address": {"address": config.admin.address,
                                                 "port_value": config.admin.port}},
                  "ignore_global_conn_limit": True},
        # Bootstrap only (no xDS for it): changing the heap or connection limit needs an Envoy restart.
        "overload_manager": overload_manager(config),
        # The tracer's flush interval, when tracing is on (outrider/envoy_tracing.py).
        **({"layered_runtime": runtime} if (runtime := tracing_runtime(config)) is not None else {}),
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if use_delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {
                    "cluster_name": XDS_CLUSTER,
                    # Reconnect quickly after a control plane restart (Envoy's default backs off to 30 s).
                    "retry_policy": {"retry_back_off": {"base_interval": "0.25s", "max_interval": "2s"}},
                }}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": _ads_source(),
            "lds_config": _ads_source(),
        },
        "static_resources": {"clusters": [xds_cluster]},
    }
