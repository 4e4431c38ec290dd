"""How `outrider run` starts one outrider service: standalone on the file, or as a client of the control plane.

The service plugins call this from their `processes` hook; the supervisor never names a service.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

from outrider.config.model import GatewayConfig
from outrider.process import ManagedProcess, grpc_serving, http_ready
from outrider.xds_client import service_node_id


class ListenSettings(Protocol):
    """What the supervisor reads of a service's `services.<name>` section."""

    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def metrics_port(self) -> int: ...
    @property
    def workers(self) -> int: ...


def service_process(name: str, module: str, settings: ListenSettings, config: GatewayConfig,
                    config_path: Path, from_control_plane: bool, serves_gateway_metrics: bool = False
                    ) -> ManagedProcess:
    """One outrider service: a client of the control plane when there is one, else standalone on the file.

    On the control plane the service is ready once its gRPC health says SERVING, which it says only
    after it has applied its first config version.
    """
    python = sys.executable
    # The pod's scraped process also serves the metrics derived from Envoy's stats (outrider/envoy_metrics.py).
    gateway_metrics = ["--envoy-admin", f"http://{config.admin.address}:{config.admin.port}"] \
        if serves_gateway_metrics else []
    if not from_control_plane:
        return ManagedProcess(name, [python, "-m", module, "--config", str(config_path), *gateway_metrics],
                              ready=http_ready(f"http://{settings.address}:{settings.metrics_port}/metrics"))
    xds = config.services.xds
    argv = [python, "-m", module, "--xds", ",".join(xds.ads_servers()),
            "--node-id", service_node_id(xds.node_id, name), "--node-cluster", xds.node_cluster,
            "--address", settings.address, "--port", str(settings.port), "--metrics-port", str(settings.metrics_port),
            "--log-level", config.logging.level, "--workers", str(settings.workers), *gateway_metrics]
    tls = xds.tls
    if tls is not None and tls.client_cert_file is not None and tls.client_key_file is not None:
        argv += ["--xds-ca", str(tls.server_ca_file or tls.client_ca_file), "--xds-cert", str(tls.client_cert_file),
                 "--xds-key", str(tls.client_key_file), "--xds-server-name", tls.server_name]
    return ManagedProcess(name, argv, ready=grpc_serving(settings.address, settings.port))
