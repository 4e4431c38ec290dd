"""Test fixture: the gateway's Kubernetes objects as CONTRACT.md names them, until deploy/kubernetes lands.

Deviations from CONTRACT.md, each forced by what a kubelet does (the lead switches to the rendered manifests):
- the sidecars listen on 0.0.0.0, not 127.0.0.1: the kubelet's gRPC probes connect to the pod's IP, so a
  server bound to loopback never passes them (Envoy still calls them on 127.0.0.1: same network namespace);
- the control plane reads its own ConfigMap (ADS and admin on 0.0.0.0, state in an emptyDir) because
  `python -m xds_server --address/--admin-address` (the replicas helper's) is not on this branch yet;
- the sidecars' startup probes check every second (the default 10 s would make the three sequential starts
  take half a minute).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from tests.harness import EXAMPLE_CONFIG, KEYS_DIR

NAMESPACE = "outrider"
LISTENER_PORT = 10000
ADMIN_TOKEN = "pod-harness-test-token"  # DEVELOPMENT ONLY: a fixed token for a throwaway control plane
# The harness honours readOnlyRootFilesystem (only volumes are writable); the rest is the issue's hardening.
SECURITY_CONTEXT = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]}}
SIDECARS = [  # (container name, module, service name in node ids, port, metrics port) — examples/gateway.yaml's
    ("ext-authz", "ext_authz", "ext_authz", 18081, 19081),
    ("ratelimit", "ratelimit_service", "ratelimit", 18082, 19082),
    ("ext-proc", "ext_proc", "ext_proc", 18083, 19083),
]


def gateway_config(control_plane: bool) -> dict[str, Any]:
    """examples/gateway.yaml as a pod sees it: the listener on the pod's address, the control plane and the
    demo upstream by their Service names."""
    data: dict[str, Any] = copy.deepcopy(yaml.safe_load(EXAMPLE_CONFIG.read_text()))
    data["listeners"][0]["address"] = "0.0.0.0"
    data["listeners"][0]["port"] = LISTENER_PORT
    services = data["services"]
    services["demo_upstream"]["enabled"] = False
    # The test is about the pod lifecycle, on 2 cores shared with other test runs: a CPU-starved service
    # must not turn into a fail-closed 403/500 that reads as a lost request. (The example's 250/500 ms
    # budgets stay what a real deployment uses.)
    services["ext_authz"]["timeout_ms"] = 2000
    services["ext_proc"]["message_timeout_ms"] = 2000
    xds = services["xds"]
    if control_plane:
        xds.update(address="0.0.0.0", admin_address="0.0.0.0", state_dir="/run/outrider/xds-state")
    else:
        xds["address"] = "outrider-control-plane"
    data["upstreams"][0]["endpoints"] = [{"address": "demo-upstream", "port": 18080}]
    data["logging"] = {"level": "info"}
    return data


def _meta(name: str, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if labels:
        meta["labels"] = labels
    return meta


def _config_map(name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name),
            "data": {"gateway.yaml": yaml.safe_dump(config, sort_keys=False)}}


def _sidecar(name: str, module: str, service: str, port: int, metrics_port: int) -> dict[str, Any]:
    grpc = {"grpc": {"port": port}}
    return {
        "name": name,
        "image": "outrider:dev",
        "restartPolicy": "Always",
        "command": ["python", "-m", module],
        "args": ["--xds", "outrider-control-plane:18000", "--node-id", f"outrider-gateway/{service}",
                 "--node-cluster", "outrider", "--address", "0.0.0.0", "--port", str(port),
                 "--metrics-port", str(metrics_port)],
        "ports": [{"name": "grpc", "containerPort": port}, {"name": "metrics", "containerPort": metrics_port}],
        "securityContext": SECURITY_CONTEXT,
        "startupProbe": {**grpc, "periodSeconds": 1, "failureThreshold": 30},
        "readinessProbe": {**grpc, "periodSeconds": 5},
        "livenessProbe": {**grpc, "periodSeconds": 10},
    }


def gateway_deployment() -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "outrider", "app.kubernetes.io/component": "gateway"}
    envoy = {
        "name": "envoy",
        "image": "outrider:dev",
        "command": ["outrider", "envoy", "/etc/outrider/gateway.yaml", "--bootstrap", "/run/outrider/envoy.yaml"],
        "ports": [{"name": "http", "containerPort": LISTENER_PORT}],
        "readinessProbe": {"httpGet": {"path": "/health/ready", "port": LISTENER_PORT},
                           "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/health/live", "port": LISTENER_PORT},
                          "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "lifecycle": {"preStop": {"exec": {"command": ["outrider", "drain", "--timeout", "20"]}}},
        "securityContext": SECURITY_CONTEXT,
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/outrider", "readOnly": True},
            {"name": "jwt", "mountPath": "/etc/outrider/keys", "readOnly": True},
            {"name": "run", "mountPath": "/run/outrider"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    sidecars = [_sidecar(*s) for s in SIDECARS]
    for sidecar in sidecars:
        sidecar["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    # ext_authz reads the JWKS file the config names (/etc/outrider/keys/jwks.json) itself: it needs the keys.
    sidecars[0]["volumeMounts"] += [{"name": "config", "mountPath": "/etc/outrider", "readOnly": True},
                                    {"name": "jwt", "mountPath": "/etc/outrider/keys", "readOnly": True}]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta("outrider-gateway", **labels),
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {
                "terminationGracePeriodSeconds": 45,
                "initContainers": sidecars,
                "containers": [envoy],
                "volumes": [
                    {"name": "config", "configMap": {"name": "outrider-gateway-config"}},
                    {"name": "jwt", "secret": {"secretName": "outrider-jwt"}},
                    {"name": "run", "emptyDir": {}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            },
        }},
    }


def control_plane_deployment() -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "outrider", "app.kubernetes.io/component": "control-plane"}
    container = {
        "name": "xds-server",
        "image": "outrider:dev",
        "command": ["python", "-m", "xds_server", "--config", "/etc/outrider/gateway.yaml"],
        "env": [{"name": "OUTRIDER_ADMIN_TOKEN",
                 "valueFrom": {"secretKeyRef": {"name": "outrider-admin-token", "key": "token"}}}],
        "ports": [{"name": "ads", "containerPort": 18000}, {"name": "admin", "containerPort": 18001}],
        "readinessProbe": {"grpc": {"port": 18000}, "periodSeconds": 1},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/outrider", "readOnly": True},
            {"name": "jwt", "mountPath": "/etc/outrider/keys", "readOnly": True},
            {"name": "run", "mountPath": "/run/outrider"},
        ],
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta("outrider-control-plane", **labels),
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 10, "volumes": [
                {"name": "config", "configMap": {"name": "outrider-control-plane-config"}},
                {"name": "jwt", "secret": {"secretName": "outrider-jwt"}},
                {"name": "run", "emptyDir": {}},
            ]},
        }},
    }


def demo_upstream_pod() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta("demo-upstream", app="demo-upstream"), "spec": {
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "demo", "image": "outrider:dev",
            "command": ["python", "-m", "outrider.demo_upstream", "--address", "0.0.0.0", "--port", "18080"],
            "readinessProbe": {"tcpSocket": {"port": 18080}, "periodSeconds": 1},
        }]}}


def _service(name: str, selector: dict[str, str], ports: list[tuple[str, int, int]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name), "spec": {
        "selector": selector,
        "ports": [{"name": n, "port": p, "targetPort": t} for n, p, t in ports]}}


def objects() -> list[dict[str, Any]]:
    """ConfigMaps, Secrets and Services."""
    return [
        _config_map("outrider-gateway-config", gateway_config(control_plane=False)),
        _config_map("outrider-control-plane-config", gateway_config(control_plane=True)),
        {"apiVersion": "v1", "kind": "Secret", "metadata": _meta("outrider-jwt"),
         "stringData": {"jwks.json": (KEYS_DIR / "jwks.json").read_text()}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": _meta("outrider-admin-token"),
         "stringData": {"token": ADMIN_TOKEN}},
        _service("outrider-control-plane", {"app.kubernetes.io/component": "control-plane"},
                 [("ads", 18000, 18000), ("admin", 18001, 18001)]),
        _service("demo-upstream", {"app": "demo-upstream"}, [("http", 18080, 18080)]),
        _service("outrider-gateway", {"app.kubernetes.io/component": "gateway"}, [("http", 8080, LISTENER_PORT)]),
    ]


def all_documents() -> list[dict[str, Any]]:
    return [*objects(), control_plane_deployment(), demo_upstream_pod(), gateway_deployment()]
