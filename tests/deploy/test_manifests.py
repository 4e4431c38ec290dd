"""deploy/kubernetes offline: every rendered object against the Kubernetes 1.30 schemas; the gateway design's numbers.

Renders the base and the overlays with `kubectl kustomize` (any kubectl: the kustomizations use only fields
kustomize v2.0.3 knows, which Debian's kubernetes-client ships), validates each object with
kubernetes-validate (strict: unknown fields are errors), then checks what a schema cannot: probe timings,
the rollout, the HPA target, sidecar order, the securityContext of every container, who the
NetworkPolicies let through, that the ports agree with the gateway config, and that the config in the
ConfigMap passes `outrider validate` as the pods see it (/etc/outrider with the Secret's keys beside it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
# Native sidecars (initContainers with restartPolicy: Always) need Kubernetes >= 1.29; the schemas of 1.30.
KUBERNETES_VERSION = "1.30.0"
LAYOUTS = ("base", "overlays/production", "overlays/dev")
SIDECARS = [("ext-authz", "ext_authz", "ext_authz"), ("ratelimit", "ratelimit_service", "ratelimit"),
            ("ext-proc", "ext_proc", "ext_proc")]  # (container, module, services: section), in start order
DRAIN_MARGIN_S = 15  # Envoy's exit after the drain and the sidecars' own shutdown, inside the grace period
# kustomize v2.0.3 (kubectl 1.14-1.20) knows these; anything newer fails to render there.
KUSTOMIZE_V2_FIELDS = {"namespace", "resources", "bases", "patchesStrategicMerge", "configMapGenerator",
                       "commonLabels"}

Obj = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: `make test-deps` installs it (Debian package kubernetes-client)")
    return found


def render(layout: str) -> list[Obj]:
    out = subprocess.run([kubectl(), "kustomize", str(KUBE / layout)], capture_output=True, text=True,
                         check=False, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {layout}: {out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {layout: render(layout) for layout in LAYOUTS}


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def configmap(objs: list[Obj]) -> Obj:
    found = [o for o in objs
             if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("outrider-gateway-config")]
    assert len(found) == 1
    return found[0]


def pod_spec(objs: list[Obj], name: str) -> Obj:
    spec: Obj = one(objs, "Deployment", name)["spec"]["template"]["spec"]
    return spec


def gateway_config(objs: list[Obj]) -> Obj:
    data: Obj = yaml.safe_load(configmap(objs)["data"]["gateway.yaml"])
    return data


def arg(container: Obj, flag: str) -> str:
    args = container.get("args", [])
    assert flag in args, f"{container['name']}: no {flag} in {args}"
    value: str = args[args.index(flag) + 1]
    return value


def containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


# --- schemas ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_object_validates_against_the_kubernetes_schemas(rendered: dict[str, list[Obj]], layout: str) -> None:
    objs = rendered[layout]
    assert {o["kind"] for o in objs} >= {"Deployment", "Service", "ConfigMap", "NetworkPolicy",
                                         "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{layout}: {obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "outrider", f"{obj['kind']}/{obj['metadata']['name']}"


def test_native_sidecars_need_kubernetes_1_29(rendered: dict[str, list[Obj]]) -> None:
    """The validation is real: the schemas of 1.27 refuse restartPolicy on an init container."""
    gateway = one(rendered["base"], "Deployment", "outrider-gateway")
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        kubernetes_validate.validate(gateway, "1.27.0", strict=True)


def test_secret_placeholders_validate_and_stay_out_of_the_applied_set(rendered: dict[str, list[Obj]]) -> None:
    examples = [d for d in yaml.safe_load_all((KUBE / "base" / "secrets.example.yaml").read_text()) if d]
    for secret in examples:
        kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
    assert {s["metadata"]["name"] for s in examples} == {"outrider-admin-token", "outrider-jwt"}
    assert not next(s for s in examples if s["metadata"]["name"] == "outrider-admin-token")["stringData"]["token"]
    # `kubectl apply -k` of base or production must never overwrite the operator's real secrets.
    for layout in ("base", "overlays/production"):
        assert not [o for o in rendered[layout] if o["kind"] == "Secret"], layout


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_config_map_and_secret_a_pod_uses_exists(rendered: dict[str, list[Obj]], layout: str) -> None:
    objs = rendered[layout]
    secrets = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    if layout != "overlays/dev":  # created by the operator from secrets.example.yaml
        secrets |= {"outrider-admin-token", "outrider-jwt"}
    maps = {o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"}
    for deployment in (o for o in objs if o["kind"] == "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in maps
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
        for container in containers(spec):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets


def test_kustomizations_use_only_fields_kustomize_v2_knows() -> None:
    for path in KUBE.rglob("kustomization.yaml"):
        fields = set(yaml.safe_load(path.read_text()))
        assert fields <= KUSTOMIZE_V2_FIELDS, f"{path.relative_to(ROOT)}: {fields - KUSTOMIZE_V2_FIELDS}"


# --- the gateway pod -------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_sidecars_start_in_order_with_grpc_probes_on_their_config_ports(rendered: dict[str, list[Obj]],
                                                                        layout: str) -> None:
    objs = rendered[layout]
    spec, config = pod_spec(objs, "outrider-gateway"), gateway_config(objs)
    inits = spec["initContainers"]
    assert [c["name"] for c in inits] == [name for name, _, _ in SIDECARS]
    for container, (_, module, section) in zip(inits, SIDECARS, strict=True):
        assert container["restartPolicy"] == "Always", container["name"]
        assert container["command"] == ["python", "-m", module]
        port = int(arg(container, "--port"))
        assert port == config["services"][section]["port"]
        assert int(arg(container, "--metrics-port")) == config["services"][section]["metrics_port"]
        assert arg(container, "--xds") == ",".join(config["services"]["xds"]["servers"])
        assert arg(container, "--node-id") == f"{config['services']['xds']['node_id']}/{section}"
        assert arg(container, "--node-cluster") == config["services"]["xds"]["node_cluster"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, f"{container['name']} {probe}"
        assert (container["readinessProbe"]["periodSeconds"], container["readinessProbe"]["timeoutSeconds"],
                container["readinessProbe"]["failureThreshold"]) == (5, 3, 3)
        assert (container["livenessProbe"]["periodSeconds"], container["livenessProbe"]["timeoutSeconds"],
                container["livenessProbe"]["failureThreshold"]) == (10, 5, 3)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_envoy_probes_drain_and_grace_period(rendered: dict[str, list[Obj]], layout: str) -> None:
    objs = rendered[layout]
    spec, config = pod_spec(objs, "outrider-gateway"), gateway_config(objs)
    [envoy] = spec["containers"]
    listener = config["listeners"][0]["port"]
    assert envoy["name"] == "envoy"
    assert envoy["command"] == ["outrider", "envoy", "/etc/outrider/gateway.yaml",
                                "--bootstrap", "/run/outrider/envoy.yaml"]
    assert {"name": "http", "containerPort": listener} in envoy["ports"]
    ready, live = envoy["readinessProbe"], envoy["livenessProbe"]
    assert ready["httpGet"] == {"path": "/health/ready", "port": listener}
    assert (ready["periodSeconds"], ready["timeoutSeconds"], ready["failureThreshold"]) == (5, 3, 3)
    assert live["httpGet"] == {"path": "/health/live", "port": listener}
    assert (live["periodSeconds"], live["timeoutSeconds"], live["failureThreshold"]) == (10, 5, 3)
    # /health/live must be answered by Envoy itself, or liveness would depend on an upstream.
    assert any(r["match"].get("path") == "/health/live" and "direct_response" in r for r in config["routes"])
    drain = envoy["lifecycle"]["preStop"]["exec"]["command"]
    assert drain[:2] == ["outrider", "drain"]
    timeout = int(drain[drain.index("--timeout") + 1])
    assert spec["terminationGracePeriodSeconds"] >= timeout + DRAIN_MARGIN_S


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rollout_pdb_and_hpa(rendered: dict[str, list[Obj]], layout: str) -> None:
    objs = rendered[layout]
    gateway = one(objs, "Deployment", "outrider-gateway")
    assert gateway["spec"]["strategy"] == {"type": "RollingUpdate",
                                           "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": "25%"}}
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "gateway"
    pdb = one(objs, "PodDisruptionBudget", "outrider-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one(objs, "HorizontalPodAutoscaler", "outrider-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "outrider-gateway"}
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]
    assert hpa["spec"]["minReplicas"] <= gateway["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    # Utilization is relative to the requests: every container of the pod needs a CPU request.
    for container in containers(gateway["spec"]["template"]["spec"]):
        assert container["resources"]["requests"]["cpu"], container["name"]
    assert one(objs, "Deployment", "outrider-control-plane")["spec"]["replicas"] == 2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_container_runs_restricted(rendered: dict[str, list[Obj]], layout: str) -> None:
    for deployment in (o for o in rendered[layout] if o["kind"] == "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and pod.get("runAsUser", 0) != 0, deployment["metadata"]["name"]
        assert spec.get("automountServiceAccountToken") is False
        for container in containers(spec):
            where = f"{deployment['metadata']['name']}/{container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities") == {"drop": ["ALL"]}, where
            assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            assert container["resources"]["limits"]["memory"], where


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_pod_says_whether_prometheus_scrapes_it(rendered: dict[str, list[Obj]], layout: str) -> None:
    for deployment in (o for o in rendered[layout] if o["kind"] == "Deployment"):
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        name = deployment["metadata"]["name"]
        assert annotations.get("prometheus.io/scrape") in ("true", "false"), name
        if annotations["prometheus.io/scrape"] == "true":
            ports = {p["containerPort"] for c in containers(deployment["spec"]["template"]["spec"])
                     for p in c.get("ports", [])}
            assert int(annotations["prometheus.io/port"]) in ports, name
            assert annotations["prometheus.io/path"] == "/metrics", name
    assert {o["metadata"]["name"] for o in rendered[layout] if o["kind"] == "Deployment"} >= {
        "outrider-gateway", "outrider-control-plane", "outrider-redis"}


# --- the config in the ConfigMap -------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_config_points_at_the_services_and_mounts(rendered: dict[str, list[Obj]], layout: str) -> None:
    objs = rendered[layout]
    config = gateway_config(objs)
    xds = config["services"]["xds"]
    assert xds["enabled"] is True
    assert xds["servers"] == ["outrider-control-plane:18000"]
    assert xds["store"]["kind"] == "redis" and xds["store"]["url"].startswith("redis://outrider-redis:6379/")
    assert config["rate_limits"]["redis"]["url"].startswith("redis://outrider-redis:6379/")
    assert config["cache"]["backend"] == "redis" and config["cache"]["redis_url"].startswith("redis://outrider-redis:")
    assert config["admin"]["address"] == "127.0.0.1"
    for _, _, section in SIDECARS:  # Envoy calls its sidecars inside the pod
        assert config["services"][section]["address"] == "127.0.0.1"
    plane = one(objs, "Service", "outrider-control-plane")["spec"]["ports"]
    assert {p["port"] for p in plane} == {xds["port"], xds["admin_port"]}
    assert "outrider-control-plane" in xds["admin_allowed_hosts"]
    redis = one(objs, "Service", "outrider-redis")["spec"]["ports"]
    assert [p["port"] for p in redis] == [6379]
    gateway = one(objs, "Service", "outrider-gateway")["spec"]["ports"]
    assert gateway == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    for name in ("outrider-gateway", "outrider-control-plane"):
        spec = pod_spec(objs, name)
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["config"]["configMap"]["name"] == configmap(objs)["metadata"]["name"]
        assert volumes["jwt"]["secret"]["secretName"] == "outrider-jwt"
        for container in containers(spec):
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/etc/outrider"] == "config" and mounts["/etc/outrider/keys"] == "jwt"
            assert mounts["/run/outrider"] == "run" and mounts["/tmp"] == "tmp"


@pytest.mark.parametrize("layout", ["base", "overlays/dev"])
def test_config_in_the_configmap_passes_outrider_validate(rendered: dict[str, list[Obj]], layout: str,
                                                          tmp_path: Path) -> None:
    """As the pods see it: gateway.yaml in /etc/outrider, the Secret outrider-jwt's files in keys/ beside it."""
    objs = rendered[layout]
    etc = tmp_path / "etc" / "outrider"
    (etc / "keys").mkdir(parents=True)
    (etc / "gateway.yaml").write_text(configmap(objs)["data"]["gateway.yaml"])
    secrets = [o for o in objs if o["kind"] == "Secret"] or [
        d for d in yaml.safe_load_all((KUBE / "base" / "secrets.example.yaml").read_text()) if d]
    jwt = next(s for s in secrets if s["metadata"]["name"] == "outrider-jwt")
    for key, value in jwt["stringData"].items():
        (etc / "keys" / key).write_text(value)
    out = subprocess.run([sys.executable, "-m", "outrider", "validate", str(etc / "gateway.yaml")],
                         capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


# --- NetworkPolicy ----------------------------------------------------------------------------------------

NAMESPACE_LABELS = {"kubernetes.io/metadata.name": "outrider"}
GATEWAY = {"app.kubernetes.io/name": "outrider", "app.kubernetes.io/component": "gateway"}
PLANE = {"app.kubernetes.io/name": "outrider", "app.kubernetes.io/component": "control-plane"}
REDIS = {"app.kubernetes.io/name": "outrider", "app.kubernetes.io/component": "redis"}
OPERATOR = {"outrider.dev/operator": "true"}
OTHER = {"app": "something-else"}
MONITORING_NS = {"kubernetes.io/metadata.name": "monitoring"}


def matches(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"evaluator knows matchLabels only: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def peer_matches(peer: Obj, source: dict[str, str], source_ns: dict[str, str]) -> bool:
    assert set(peer) <= {"podSelector", "namespaceSelector"}, f"evaluator knows pod/namespace selectors: {peer}"
    if "namespaceSelector" in peer:
        ns_ok = matches(peer["namespaceSelector"], source_ns)
    else:  # a podSelector alone selects pods of the policy's own namespace
        ns_ok = source_ns == NAMESPACE_LABELS
    return ns_ok and matches(peer.get("podSelector", {}), source)


def admitted(policies: list[Obj], dest: dict[str, str], port: int, source: dict[str, str],
             source_ns: dict[str, str] = NAMESPACE_LABELS) -> bool:
    """Kubernetes' ingress semantics: isolated once any policy selects the pod; then some rule must allow it."""
    selecting = [p for p in policies if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                 and matches(p["spec"]["podSelector"], dest)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            port_ok = ports is None or any(p["port"] == port for p in ports)
            peers = rule.get("from")
            peer_ok = peers is None or any(peer_matches(peer, source, source_ns) for peer in peers)
            if port_ok and peer_ok:
                return True
    return False


@pytest.mark.parametrize("layout", LAYOUTS)
def test_network_policies_admit_only_who_needs_it(rendered: dict[str, list[Obj]], layout: str) -> None:
    policies = [o for o in rendered[layout] if o["kind"] == "NetworkPolicy"]
    # ADS: gateway pods only.
    assert admitted(policies, PLANE, 18000, GATEWAY)
    assert not admitted(policies, PLANE, 18000, OPERATOR)
    assert not admitted(policies, PLANE, 18000, OTHER)
    assert not admitted(policies, PLANE, 18000, GATEWAY, MONITORING_NS)  # same labels, another namespace
    # Admin API: operator pods only.
    assert admitted(policies, PLANE, 18001, OPERATOR)
    assert not admitted(policies, PLANE, 18001, GATEWAY)
    assert not admitted(policies, PLANE, 18001, OTHER)
    assert not admitted(policies, PLANE, 18001, OPERATOR, MONITORING_NS)
    # Redis: gateway and control plane only.
    assert admitted(policies, REDIS, 6379, GATEWAY) and admitted(policies, REDIS, 6379, PLANE)
    assert not admitted(policies, REDIS, 6379, OTHER)
    assert not admitted(policies, REDIS, 6379, OPERATOR)
    # Gateway: the listener for everyone, the sidecars' gRPC ports (bound beside /metrics) for nobody.
    assert admitted(policies, GATEWAY, 10000, OTHER)
    for port in (18081, 18082, 18083):
        assert not admitted(policies, GATEWAY, port, OTHER)
        assert not admitted(policies, GATEWAY, port, GATEWAY)
    # /metrics: Prometheus from the monitoring namespace always; production admits nobody else.
    for dest, port in ((GATEWAY, 19081), (GATEWAY, 19082), (GATEWAY, 19083), (PLANE, 19084)):
        assert admitted(policies, dest, port, {"app": "prometheus"}, MONITORING_NS)
        if layout == "overlays/production":
            assert not admitted(policies, dest, port, OTHER)


def test_production_denies_what_no_policy_allows(rendered: dict[str, list[Obj]]) -> None:
    policies = [o for o in rendered["overlays/production"] if o["kind"] == "NetworkPolicy"]
    assert not admitted(policies, OTHER, 8080, OTHER)  # any other pod of the namespace
    egress = {p["metadata"]["name"]: p for p in policies if "Egress" in p["spec"]["policyTypes"]}
    assert egress["outrider-redis-egress"]["spec"]["egress"] == []
    plane = egress["outrider-control-plane-egress"]["spec"]
    assert matches(plane["podSelector"], PLANE)
    assert [p["port"] for rule in plane["egress"] for p in rule["ports"]] == [6379, 53, 53]
