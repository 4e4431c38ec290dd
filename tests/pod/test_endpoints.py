"""The pure parts of Services and workloads: Service ports, endpoint selection (round robin over ready pods),
replicas and start order, image entrypoints; and the Service proxy over real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from outrider.pod.endpoints import Endpoint, RoundRobin, ServicePort, parse_service, selects, target_port
from outrider.pod.service_proxy import ServiceProxy
from outrider.pod.spec import ObjectStore, SpecError, parse_pod
from outrider.pod.workloads import start_order, workload


def service(name: str, selector: dict[str, str], ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "outrider"},
            "spec": {"selector": selector, "ports": ports}}


def deployment(name: str, labels: dict[str, str], args: list[str], replicas: int = 1,
               volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"kind": "Deployment", "metadata": {"name": name}, "spec": {"replicas": replicas, "template": {
        "metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "command": ["x"], "args": args}],
                                                 "volumes": volumes or []}}}}


def test_service_ports_named_target_ports_and_dns_names() -> None:
    spec = parse_service(service("outrider-control-plane", {"app": "cp"}, [
        {"name": "grpc-ads", "port": 18000, "targetPort": "ads"}, {"port": 18001, "targetPort": "18001"},
        {"port": 80}]))
    assert spec.ports == (ServicePort("grpc-ads", 18000, "ads"), ServicePort("", 18001, 18001),
                          ServicePort("", 80, 80))
    assert spec.dns_names[-1] == "outrider-control-plane.outrider.svc.cluster.local"
    pod_ports = [("ads", 28000), ("metrics", 19084)]
    assert [target_port(p, pod_ports) for p in spec.ports] == [28000, 18001, 80]
    assert target_port(ServicePort("x", 1, "absent"), pod_ports) is None  # not an endpoint for that port


@pytest.mark.parametrize(("ports", "message"), [
    ([{"port": 0}], r"ports\[0\]\.port: expected a port number"),
    ([{"port": 53, "protocol": "UDP"}], "only TCP"),
    ([{"port": 53, "targetPort": ""}], "targetPort"),
])
def test_bad_services_name_the_field(ports: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_service(service("s", {"a": "b"}, ports))


def test_selector_matches_labels_and_an_empty_selector_matches_nothing() -> None:
    assert selects((("app", "gw"),), {"app": "gw", "tier": "x"})
    assert not selects((("app", "gw"),), {"app": "cp"})
    assert not selects((), {"app": "gw"})


def test_round_robin_over_the_endpoints_of_the_moment() -> None:
    a, b, c = (Endpoint(n, f"10.0.0.{i}", 80) for i, n in enumerate("abc"))
    rr = RoundRobin()
    assert [rr.order([a, b])[0].pod for _ in range(4)] == ["a", "b", "a", "b"]
    assert rr.order([b, a]) == [a, b]  # listing order does not matter; the next try is the following one
    assert [rr.order([a, c])[0].pod for _ in range(2)] == ["c", "a"]  # b left the rotation
    assert rr.order([]) == []


def test_replicas_name_the_pods_and_backends_start_before_callers() -> None:
    objects = ObjectStore()
    objects.add({"kind": "ConfigMap", "metadata": {"name": "cfg"},
                 "data": {"gateway.yaml": "store: redis://db:6379\n# the gw Service points here\nservers: [cp:1]"}},
                "test")
    cfg = [{"name": "config", "configMap": {"name": "cfg"}}]
    gw = workload(deployment("gw", {"app": "gw"}, [], replicas=2, volumes=cfg), "gw")
    cp = workload(deployment("cp", {"app": "cp"}, [], replicas=2, volumes=cfg), "cp")
    db = workload(deployment("db", {"app": "db"}, ["--port", "6379"]), "db")
    services = [parse_service(service(n, {"app": n}, [{"port": 1}])) for n in ("gw", "cp", "db")]
    assert gw.pod_names == ["gw-0", "gw-1"]
    # cp and gw both read the ConfigMap naming all three (a cycle through the comment); gw calls cp:1 and
    # cp does not call gw with a port, so cp first.
    assert [w.name for w in start_order([gw, cp, db], services, objects)] == ["db", "cp", "gw"]
    alone = [workload(deployment("gw", {"app": "gw"}, ["--xds", "cp.outrider.svc:1"]), "gw"),
             workload(deployment("cp", {"app": "cp"}, ["--store", "db:1"]), "cp"), db]
    assert [w.name for w in start_order(alone, services, ObjectStore())] == ["db", "cp", "gw"]
    # A true cycle (each calls the other by address): the order given.
    ring = [workload(deployment("gw", {"app": "gw"}, ["cp:1"]), "gw"), workload(deployment("cp", {"app": "cp"},
                                                                                             ["gw:1"]), "cp")]
    assert [w.name for w in start_order(ring, services, ObjectStore())] == ["gw", "cp"]
    with pytest.raises(SpecError, match=r"spec\.replicas"):
        workload(deployment("x", {}, [], replicas=-1), "x")


def test_image_entrypoint_when_the_container_has_no_command() -> None:
    def pod(container: dict[str, Any]) -> Any:
        return parse_pod({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "m", **container}]}}).containers[0].argv

    assert pod({"image": "redis:7.4", "args": ["redis-server", "--dir", "/data"]}) == ("redis-server", "--dir", "/data")
    assert pod({"image": "docker.io/library/redis:7.4", "args": ["--port", "1"]}) == ("redis-server", "--port", "1")
    assert pod({"image": "outrider:0.1.0"})[:2] == ("outrider", "envoy")
    with pytest.raises(SpecError, match=r"command: required here for image 'nginx'"):
        pod({"image": "nginx"})


@pytest.fixture
def backends() -> Iterator[list[tuple[str, int]]]:
    """Two echo servers that answer with their name."""
    servers, stop = [], threading.Event()
    for name in ("one", "two"):
        sock = socket.create_server(("127.0.0.1", 0))
        sock.settimeout(0.2)
        servers.append((name, sock))

    def serve(name: str, sock: socket.socket) -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.recv(100)
                conn.sendall(name.encode())

    threads = [threading.Thread(target=serve, args=s, daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield [(name, sock.getsockname()[1]) for name, sock in servers]
    stop.set()
    for t in threads:
        t.join(2)
    for _, sock in servers:
        sock.close()


def test_the_proxy_round_robins_new_connections_and_skips_a_dead_endpoint(backends: list[tuple[str, int]]) -> None:
    dead = socket.create_server(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # refuses: the proxy moves on to the next endpoint
    ready = [Endpoint(name, "127.0.0.1", port) for name, port in backends]
    current = [*ready, Endpoint("zz-dead", "127.0.0.1", dead_port)]
    proxy = ServiceProxy(lambda key: list(current))
    listen = socket.create_server(("127.0.0.1", 0))
    port = listen.getsockname()[1]
    listen.close()
    try:
        proxy.listen("svc:80", "127.0.0.1", port)

        def ask() -> str:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(b"hi")
                return conn.recv(100).decode()

        assert [ask() for _ in range(6)].count("one") in (3, 4)
        assert proxy.connections[("svc:80", "zz-dead")] == 0
        current[:] = [ready[1]]  # "one" turned unready: only "two" from now on
        assert {ask() for _ in range(3)} == {"two"}
        current.clear()  # no endpoint: the connection is closed at once
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            assert conn.recv(100) == b""
        assert proxy.rejected["svc:80"] == 1
    finally:
        proxy.close()


def test_manifests_from_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kubectl kustomize deploy/kubernetes/overlays/dev | outrider pod -`"""
    import io

    from outrider.pod.cluster import load_documents

    monkeypatch.setattr("sys.stdin", io.StringIO("kind: Service\nmetadata: {name: s}\n---\n---\nkind: Pod\n"))
    assert [(where, doc["kind"]) for where, doc in load_documents(["-"])] == [("-[0]", "Service"), ("-[2]", "Pod")]
    monkeypatch.setattr("sys.stdin", io.StringIO("just text\n"))
    with pytest.raises(SpecError, match=r"-\[0\]: not a Kubernetes object"):
        load_documents(["-"])
