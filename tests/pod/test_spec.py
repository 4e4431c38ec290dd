"""Pure parts of the pod harness: pod spec → start/stop order, probes, env, volumes; the drain's stats; the
Envoy bootstrap's Service names."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outrider.envoy_command import active_downstream_connections, resolve_names_by_dns
from outrider.pod.cluster import WORKDIR_PARENT
from outrider.pod.mounts import mount_script, read_only_volumes, write_volumes
from outrider.pod.probe_state import ProbeState
from outrider.pod.runner import local_argv
from outrider.pod.spec import ObjectStore, Probe, SpecError, expand, parse_pod, parse_probe
from tests.pod import manifests


def objects() -> ObjectStore:
    store = ObjectStore()
    for doc in manifests.objects():
        store.add(doc, "fixture")
    return store


def gateway() -> Any:
    return parse_pod(manifests.gateway_deployment(), objects())


def test_deployment_template_gives_sidecars_in_order_then_envoy() -> None:
    pod = gateway()
    assert pod.name == "outrider-gateway"
    assert [(c.name, c.role) for c in pod.start_plan()] == [
        ("ext-authz", "sidecar"), ("ratelimit", "sidecar"), ("ext-proc", "sidecar"), ("envoy", "main")]
    assert pod.grace_period_s == 45
    assert ("app.kubernetes.io/component", "gateway") in pod.labels


def test_stop_order_is_main_first_then_sidecars_in_reverse() -> None:
    mains, sidecars = gateway().stop_plan()
    assert [c.name for c in mains] == ["envoy"]
    assert [c.name for c in sidecars] == ["ext-proc", "ratelimit", "ext-authz"]


def test_plain_init_containers_run_before_sidecars_that_follow_them() -> None:
    doc = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "initContainers": [{"name": "migrate", "command": ["true"]},
                           {"name": "side", "command": ["sleep", "9"], "restartPolicy": "Always"}],
        "containers": [{"name": "main", "command": ["sleep", "9"]}]}}
    pod = parse_pod(doc)
    assert [(c.name, c.role) for c in pod.start_plan()] == [("migrate", "init"), ("side", "sidecar"), ("main", "main")]
    assert [c.name for c in pod.stop_plan()[1]] == ["side"]  # a finished init container is not stopped


def test_probes_of_the_envoy_container() -> None:
    envoy = gateway().containers[-1]
    assert envoy.readiness == Probe("httpGet", port=10000, path="/health/ready", period_s=5, timeout_s=3,
                                    failure_threshold=3)
    assert envoy.liveness is not None and envoy.liveness.period_s == 10 and envoy.liveness.timeout_s == 5
    assert envoy.pre_stop is not None and envoy.pre_stop.command == ("outrider", "drain", "--timeout", "20")
    sidecar = gateway().containers[0]
    assert sidecar.startup == Probe("grpc", port=18081, period_s=1, failure_threshold=30)


def test_probe_defaults_and_named_ports() -> None:
    probe = parse_probe({"tcpSocket": {"port": "ads"}}, {"ads": 18000}, "p")
    assert (probe.kind, probe.port, probe.period_s, probe.timeout_s, probe.success_threshold,
            probe.failure_threshold, probe.initial_delay_s) == ("tcpSocket", 18000, 10, 1, 1, 3, 0)
    assert parse_probe({"exec": {"command": ["true"]}}, {}, "p").command == ("true",)


@pytest.mark.parametrize(("doc", "message"), [
    ({"grpc": {"port": 1}, "tcpSocket": {"port": 1}}, "needs exactly one of"),
    ({}, "needs exactly one of"),
    ({"httpGet": {"port": "nope"}}, "x.httpGet.port: 'nope' is neither"),
    ({"grpc": {"port": 1}, "periodSeconds": 0}, "x.periodSeconds: expected an integer >= 1"),
    ({"exec": {"command": []}}, "x.exec.command: must not be empty"),
])
def test_bad_probes_name_the_field(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        parse_probe(doc, {}, "x")


def test_env_from_secret_and_config_map_and_expansion() -> None:
    store = ObjectStore()
    store.add({"kind": "Secret", "metadata": {"name": "s"}, "data": {"token": "c2VjcmV0"}}, "o")
    store.add({"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"level": "debug"}}, "o")
    doc = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{
        "name": "m", "command": ["run", "--level", "$(LEVEL)", "$$(LEVEL)", "$(UNKNOWN)"],
        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "level"}}},
                {"name": "BOTH", "value": "$(TOKEN)-$(LEVEL)"}]}]}}
    doc["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "c"}, "prefix": "CM_"},
                                                {"secretRef": {"name": "s"}}]
    container = parse_pod(doc, store).containers[0]
    assert dict(container.env) == {"CM_level": "debug", "token": "secret", "TOKEN": "secret", "LEVEL": "debug",
                                   "BOTH": "secret-debug"}
    assert container.argv == ("run", "--level", "debug", "$(LEVEL)", "$(UNKNOWN)")
    assert expand("$(A)$$", {"A": "x"}) == "x$"


def test_missing_secret_names_the_container_and_field() -> None:
    doc = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{
        "name": "m", "command": ["x"],
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]}]}}
    with pytest.raises(SpecError, match=r"containers\[0\]\(m\)\.env\[0\]\.valueFrom\.secretKeyRef: secret 'absent' "
                                        r"not found"):
        parse_pod(doc, ObjectStore())


@pytest.mark.parametrize(("doc", "message"), [
    ({"kind": "Service", "metadata": {"name": "s"}}, "is not a Pod"),
    ({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}, "at least one container"),
    ({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "m", "image": "x"}]}},
     r"command: required here"),
    ({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "m", "command": ["x"], "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]}},
     "mounts volume 'v', which spec.volumes does not declare"),
    ({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"initContainers": [
        {"name": "i", "command": ["x"], "readinessProbe": {"grpc": {"port": 1}}}],
        "containers": [{"name": "m", "command": ["x"]}]}}, "probes are only allowed on native sidecars"),
])
def test_bad_pods_are_refused_with_the_reason(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_pod(doc)


def test_probe_thresholds() -> None:
    state = ProbeState(success_threshold=2, failure_threshold=3)
    assert not state.record(True) and not state.passing  # one success of two
    assert state.record(True) and state.passing
    assert not state.record(False) and not state.record(False) and state.passing  # two failures of three
    assert state.record(False) and not state.passing and state.failed
    assert not state.record(True) and not state.failed  # a success resets the failures


@pytest.fixture
def var_tmp() -> Iterator[Path]:
    """A directory outside /tmp (the gateway pod mounts an emptyDir at /tmp, which would hide one there)."""
    path = Path(tempfile.mkdtemp(prefix="orp-test-", dir=WORKDIR_PARENT))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_volumes_and_mounts(var_tmp: Path) -> None:
    pod = gateway()
    dirs = write_volumes(pod, var_tmp)
    assert (dirs["config"] / "gateway.yaml").read_text().startswith("listeners:")
    assert (dirs["jwt"] / "jwks.json").exists()
    script = mount_script(pod.containers[-1], dirs, read_only_volumes(pod))
    lines = script.splitlines()
    # Parents before the mounts inside them; ConfigMap and Secret read-only; the command last.
    assert lines.index(f"mount --bind {dirs['config']} /etc/outrider") < \
        lines.index(f"mount --bind {dirs['jwt']} /etc/outrider/keys")
    assert "mount -o remount,bind,ro /etc/outrider/keys" in lines
    assert "mount -o remount,bind,ro /run/outrider" not in lines
    assert lines[-2:] == ["mount -o remount,bind,ro /", 'exec "$@"']  # readOnlyRootFilesystem, after the volumes
    # The Secret's mount point was made inside the ConfigMap's directory, not on the host's /etc.
    assert (dirs["config"] / "keys").is_dir()


def test_host_paths_a_mount_would_hide_are_bound_back(var_tmp: Path) -> None:
    # A checkout under /tmp (as a CI runner may clone it): the pod's emptyDir at /tmp must not hide the venv.
    pod = gateway()
    dirs = write_volumes(pod, var_tmp / "volumes")
    checkout = Path("/tmp/ci-clone")
    script = mount_script(pod.containers[-1], dirs, read_only_volumes(pod),
                          keep=[checkout / ".venv", checkout, Path("/opt/elsewhere")], stage=var_tmp / "kept")
    lines = script.splitlines()
    aside = var_tmp / "kept" / pod.containers[-1].name / "keep0"
    assert aside.is_dir()
    bind_aside = f"mount --bind {checkout} {aside}"
    bind_back = f"mount --bind {aside} {checkout}"
    tmp_mount = f"mount --bind {dirs['tmp']} /tmp"
    # Aside before /tmp is covered, back after it; only the outermost hidden path; /opt is not hidden.
    assert lines.index(bind_aside) < lines.index(tmp_mount) < lines.index(bind_back)
    assert not any("ci-clone/.venv" in line or "/opt/elsewhere" in line for line in lines)
    assert lines.index(bind_back) < lines.index("mount -o remount,bind,ro /")


def test_volume_dirs_under_a_mount_target_are_refused() -> None:
    pod = gateway()
    dirs = {name: Path("/tmp/x") / name for name in ("config", "jwt", "run", "tmp")}  # never created
    with pytest.raises(SpecError, match="would be hidden by the mount at /tmp"):
        mount_script(pod.containers[-1], dirs, read_only_volumes(pod))


def test_image_python_and_outrider_are_the_venvs() -> None:
    import sys

    assert local_argv(["python", "-m", "x"]) == [sys.executable, "-m", "x"]
    assert local_argv(["outrider", "drain"])[0].endswith("/outrider")
    assert local_argv(["/bin/true"]) == ["/bin/true"]


def test_bootstrap_service_names_resolve_by_dns() -> None:
    def cluster(address: str) -> dict[str, Any]:
        return {"name": "c", "type": "STATIC", "load_assignment": {"endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": address, "port_value": 1}}}}]}]}}

    out = resolve_names_by_dns({"static_resources": {"clusters": [cluster("outrider-control-plane"),
                                                                  cluster("10.0.0.1")]}})
    named, literal = out["static_resources"]["clusters"]
    assert (named["type"], named["dns_lookup_family"]) == ("STRICT_DNS", "V4_ONLY")
    assert literal["type"] == "STATIC"


def test_drain_counts_listener_connections_but_not_the_admin() -> None:
    stats = {"stats": [{"name": "listener.0.0.0.0_10000.downstream_cx_active", "value": 2},
                       {"name": "listener.admin.downstream_cx_active", "value": 1},
                       {"name": "http.ingress.downstream_cx_active", "value": 2}]}
    assert active_downstream_connections(stats) == 2
