"""One probe check, as the kubelet makes it: gRPC health, HTTP GET, TCP connect (from the host to the pod's
address) or a command run inside the container."""

from __future__ import annotations

import http.client
import socket
import subprocess
from collections.abc import Callable, Sequence

from outrider.pod.spec import Probe


def grpc_check(host: str, port: int, service: str, timeout_s: float) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(f"{host}:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def http_check(host: str, port: int, path: str, headers: Sequence[tuple[str, str]], timeout_s: float,
               https: bool = False) -> bool:
    """Kubernetes counts 200-399 as success (redirects are not followed to other hosts)."""
    cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
    conn = cls(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"User-Agent": "kube-probe/1.29", **dict(headers)})
        status = conn.getresponse().status
        return 200 <= status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def tcp_check(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def exec_check(run: Callable[[Sequence[str], float], int], command: Sequence[str], timeout_s: float) -> bool:
    try:
        return run(command, timeout_s) == 0
    except subprocess.TimeoutExpired:
        return False


def check(probe: Probe, pod_ip: str, run_in_container: Callable[[Sequence[str], float], int]) -> bool:
    """One attempt of `probe` against a pod at `pod_ip`; True = success."""
    host = probe.host or pod_ip
    if probe.kind == "grpc":
        assert probe.port is not None
        return grpc_check(host, probe.port, probe.service, probe.timeout_s)
    if probe.kind == "httpGet":
        assert probe.port is not None
        return http_check(host, probe.port, probe.path, probe.headers, probe.timeout_s, probe.scheme == "HTTPS")
    if probe.kind == "tcpSocket":
        assert probe.port is not None
        return tcp_check(host, probe.port, probe.timeout_s)
    return exec_check(run_in_container, probe.command, probe.timeout_s)
