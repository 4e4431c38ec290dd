"""The ext_authz process: gRPC health SERVING once up, and SIGTERM drains then exits 0."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outrider.process import ManagedProcess, tcp_ready
from tests.harness import ROOT, example_config_dict, with_free_ports, write_config


def test_health_and_graceful_stop(tmp_path: Path) -> None:
    data = with_free_ports(example_config_dict())
    config = write_config(data, tmp_path / "gateway.yaml")
    port = data["services"]["ext_authz"]["port"]
    proc = ManagedProcess("ext_authz", [sys.executable, "-m", "ext_authz", "--config", str(config)],
                          ready=tcp_ready("127.0.0.1", port), log_path=tmp_path / "authz.log", cwd=ROOT)
    proc.start().wait_ready(30)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "envoy.service.auth.v3.Authorization"):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(15) == 0
        log = (tmp_path / "authz.log").read_text()
        assert '"msg":"draining"' in log
        assert '"msg":"stopped"' in log
    finally:
        proc.stop()
