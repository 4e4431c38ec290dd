"""The small Envoy bootstrap for xDS: node, admin, and one static cluster pointing at xds_server over ADS."""

from __future__ import annotations

from typing import Any

from outrider.config.model import GatewayConfig
from outrider.envoy_contribution import HTTP2_OPTIONS

XDS_CLUSTER = "outrider_xds"


def _ads_source() -> dict[str, Any]:
    # A fresh dict each time: shared ones would come out of yaml.safe_dump as anchors and aliases.
    return {"ads": {}, "resource_api_version": "V3"}


def compile_ads_bootstrap(config: GatewayConfig, delta: bool | None = None) -> dict[str, Any]:
    """Everything else (listeners, routes, clusters, endpoints) comes from xds_server.

    `delta` picks incremental xDS (DELTA_GRPC) over state of the world; None follows services.xds.protocol.
    """
    xds = config.services.xds
    use_delta = xds.protocol == "delta" if delta is None else delta
    xds_cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": HTTP2_OPTIONS,
        "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": xds.address, "port_value": xds.port}}}}]}]},
    }
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
                                                 "port_value": config.admin.port}}},
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
