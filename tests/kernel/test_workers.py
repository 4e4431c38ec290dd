"""services.<name>.workers: N processes share the gRPC port; the parent serves their summed metrics."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import grpc
import httpx
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from outrider.process import ManagedProcess, http_ready
from tests.harness import ROOT, child_pids, example_config_dict, with_free_ports, write_config


def test_two_workers_share_port_and_metrics(tmp_path: Path) -> None:
    data = with_free_ports(example_config_dict())
    data["services"]["ext_authz"]["workers"] = 2
    config = write_config(data, tmp_path / "gateway.yaml")
    svc = data["services"]["ext_authz"]
    proc = ManagedProcess("ext_authz", [sys.executable, "-m", "ext_authz", "--config", str(config)],
                          ready=http_ready(f"http://127.0.0.1:{svc['metrics_port']}/metrics"),
                          log_path=tmp_path / "authz.log", cwd=ROOT)
    proc.start().wait_ready(30)
    try:
        assert proc.proc is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(child_pids(proc.proc.pid)) < 2:
            time.sleep(0.05)
        workers = child_pids(proc.proc.pid)
        assert len(workers) == 2

        request = external_auth_pb2.CheckRequest()
        request.attributes.request.http.method = "GET"
        request.attributes.context_extensions["resource"] = "profile"
        calls = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and calls < 40:
            # A fresh channel per call: the kernel spreads new connections over the workers.
            with grpc.insecure_channel(f"127.0.0.1:{svc['port']}") as channel:
                try:
                    reply = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=2)
                except grpc.RpcError:
                    time.sleep(0.05)
                    continue
                assert reply.denied_response.status.code == 401
                calls += 1
        assert calls == 40
        metrics = httpx.get(f"http://127.0.0.1:{svc['metrics_port']}/metrics", timeout=5).text
        line = next(x for x in metrics.splitlines()
                    if x.startswith('authz_checks_total{decision="deny",reason="token_missing"}'))
        assert float(line.split()[-1]) == 40.0

        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(20) == 0
    finally:
        proc.stop()
