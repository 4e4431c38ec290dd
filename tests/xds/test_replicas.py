"""Two control-plane replicas from one config on one real Redis, behind a real Envoy and a real ext_authz:
a change on either is live everywhere, concurrent changes lose nothing, and killing the replica Envoy and
the services stream from moves them to the other without losing a request."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis as redis_lib

from outrider.process import ManagedProcess, free_port, tcp_ready
from tests.harness import ROOT, Stack, with_free_ports, write_config
from tests.redis_harness import redis_process, redis_url
from tests.xds.conftest import admin_token, xds_data

GATEWAY = "outrider-gateway"
EXT_AUTHZ = f"{GATEWAY}/ext_authz"


class Replicas:
    """Replica A (started by the stack, as `outrider run` would) and replica B (same config file, other ports)."""

    def __init__(self, stack: Stack, b: ManagedProcess, b_port: int, b_admin: int, redis: ManagedProcess) -> None:
        self.stack = stack
        self.redis = redis
        self.b = b
        self.b_port = b_port
        self.b_admin = b_admin
        token = admin_token(stack)
        headers = {"Authorization": f"Bearer {token}"}
        a_admin = stack.data["services"]["xds"]["admin_port"]
        self.admin_a = httpx.Client(base_url=f"http://127.0.0.1:{a_admin}", timeout=15.0, headers=headers)
        self.admin_b = httpx.Client(base_url=f"http://127.0.0.1:{b_admin}", timeout=15.0, headers=headers)

    @staticmethod
    def streams(admin: httpx.Client, node: str) -> int:
        status = admin.get("/v1/status").json()["nodes"].get(node, {})
        return int(status.get("connected_streams", 0))

    def close(self) -> None:
        self.admin_a.close()
        self.admin_b.close()


@pytest.fixture(scope="module", params=["sotw", "delta"])
def replicas(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Envoy on state-of-the-world or incremental xDS (their reconnects tell the server different things)."""
    workdir = tmp_path_factory.mktemp(f"replicas-{request.param}")
    redis = redis_process(workdir / "redis").start().wait_ready(10)
    data = with_free_ports(xds_data(request.param))
    xds = data["services"]["xds"]
    b_port, b_admin, b_metrics = free_port(), free_port(), free_port()
    xds["store"] = {"kind": "redis", "url": redis_url(redis), "key_prefix": "test:xds:"}
    xds["servers"] = [f"127.0.0.1:{xds['port']}", f"127.0.0.1:{b_port}"]
    xds["ack_timeout_ms"] = 3000
    config_path = write_config(data, workdir / "gateway.yaml")
    stack = Stack(config_path, data, workdir)
    b: ManagedProcess | None = None
    running: Replicas | None = None
    try:
        stack.start()  # demo upstream, replica A, ext_authz and Envoy on [A, B]
        b = ManagedProcess(
            "xds_server_b",
            [sys.executable, "-m", "xds_server", "--config", str(config_path), "--port", str(b_port),
             "--admin-port", str(b_admin), "--metrics-port", str(b_metrics)],
            ready=tcp_ready("127.0.0.1", b_port), env={"OUTRIDER_ADMIN_TOKEN": admin_token(stack)},
            log_path=workdir / "xds_server_b.log", cwd=ROOT).start().wait_ready(30)
        running = Replicas(stack, b, b_port, b_admin, redis)
        yield running
    finally:
        if running is not None:
            running.close()
        if b is not None:
            b.stop()
        stack.stop()
        redis.stop()


def _route(name: str) -> dict[str, Any]:
    return {"match": {"prefix": f"/{name}/"}, "upstream": "demo", "public": True}


def _live_after(stack: Stack, path: str, timeout_s: float = 5.0) -> float:
    """Seconds until `path` answers 200 through Envoy (polled)."""
    started = time.perf_counter()
    with stack.client() as client:
        while time.perf_counter() - started < timeout_s:
            if client.get(path).status_code == 200:
                return time.perf_counter() - started
            time.sleep(0.005)
    raise AssertionError(f"{path} not live within {timeout_s}s")


def test_a_change_on_replica_b_is_live_through_envoy_on_replica_a(replicas: Replicas) -> None:
    stack = replicas.stack
    assert replicas.streams(replicas.admin_a, GATEWAY) >= 1 and replicas.streams(replicas.admin_a, EXT_AUTHZ) == 1
    assert replicas.streams(replicas.admin_b, GATEWAY) == 0  # Envoy and the services stream from A only
    delays = []
    for i in range(20):
        put = replicas.admin_b.put(f"/v1/routes/b{i}", json=_route(f"b{i}"))
        assert put.status_code == 200, put.text
        delays.append(_live_after(stack, f"/b{i}/x"))
    version = put.json()["version"]

    def acked_on_a() -> bool:
        nodes = replicas.admin_a.get("/v1/status").json()["nodes"]
        return nodes[GATEWAY]["acked"].get("rds") == version and replicas.admin_a.get(
            "/v1/routes").json()["version"] == version

    Stack.wait_until(acked_on_a, timeout_s=5, what="Envoy on A to ACK B's change")
    p50 = statistics.median(delays)
    print(f"\nPUT on replica B -> live through Envoy on replica A: p50 {p50 * 1000:.0f} ms, "
          f"max {max(delays) * 1000:.0f} ms (20 changes)")
    assert p50 < 1.0 and max(delays) < 2.0, delays


def test_concurrent_changes_on_both_replicas_lose_no_update(replicas: Replicas) -> None:
    def put(admin: httpx.Client, name: str) -> httpx.Response:
        return admin.put(f"/v1/routes/{name}", json=_route(name))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(put, replicas.admin_a if i % 2 else replicas.admin_b, f"c{i}") for i in range(6)]
        answers = [f.result() for f in futures]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    versions = sorted(int(a.json()["version"]) for a in answers)
    assert len(set(versions)) == len(versions)  # one commit each, never two on one base

    def both_have_all() -> bool:
        for admin in (replicas.admin_a, replicas.admin_b):
            listed = admin.get("/v1/routes").json()
            if int(listed["version"]) < versions[-1] or not {f"c{i}" for i in range(6)} <= {
                    r["name"] for r in listed["routes"]}:
                return False
        return True

    Stack.wait_until(both_have_all, timeout_s=5, what="every change on both replicas")
    for i in range(6):
        assert replicas.stack.get(f"/c{i}/x").status_code == 200


def test_killing_replica_a_moves_envoy_and_the_services_to_b_without_losing_a_request(replicas: Replicas) -> None:
    stack = replicas.stack
    token = stack.token()
    failures: list[str] = []
    sent = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal sent
        with stack.client() as client:
            while not stop.is_set():
                # Through ext_authz (a token route) and a public one: the services and Envoy both keep working.
                for path, headers in (("/api/v1/users/profile", {"Authorization": f"Bearer {token}"}),
                                      ("/api/v1/public/x", {})):
                    try:
                        status = client.get(path, headers=headers).status_code
                    except httpx.HTTPError as exc:
                        failures.append(f"{path}: {exc!r}")
                        continue
                    sent += 1
                    if status != 200:
                        failures.append(f"{path}: {status}")
                time.sleep(0.02)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        killed = time.perf_counter()
        stack.procs["xds_server"].kill()  # SIGKILL: no goodbye to its streams
        Stack.wait_until(lambda: replicas.streams(replicas.admin_b, GATEWAY) >= 1
                         and replicas.streams(replicas.admin_b, EXT_AUTHZ) == 1,
                         timeout_s=15, what="Envoy and ext_authz to stream from replica B")
        print(f"\nreplica A killed -> Envoy and ext_authz on replica B after {time.perf_counter() - killed:.2f} s")
        put = replicas.admin_b.put("/v1/routes/after", json=_route("after"))
        assert put.status_code == 200, put.text
        assert {GATEWAY, EXT_AUTHZ} <= set(put.json()["acked_by"])  # B's own clients now
        _live_after(stack, "/after/x")
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(10)
    assert sent > 20 and not failures, (sent, failures[:5])



def test_without_redis_a_replica_keeps_serving_and_refuses_changes_then_writes_its_state_back(
        replicas: Replicas) -> None:
    stack = replicas.stack
    served = replicas.admin_b.get("/v1/routes").json()["version"]
    replicas.redis.stop()
    refused = replicas.admin_b.put("/v1/routes/lost", json=_route("lost"))
    assert refused.status_code == 503 and "store unavailable" in refused.json()["error"], refused.text
    assert stack.get("/after/x").status_code == 200 and stack.get("/lost/x").status_code == 404
    replicas.redis.start().wait_ready(10)  # back, empty: nothing was persisted on disk
    store = redis_lib.Redis(port=replicas.redis.port)  # type: ignore[attr-defined]
    try:
        Stack.wait_until(lambda: store.hget("test:xds:state", "version") == served.encode(), timeout_s=30,
                         what="replica B to write its served state back")
    finally:
        store.close()
    put = replicas.admin_b.put("/v1/routes/back", json=_route("back"))
    assert put.status_code == 200 and int(put.json()["version"]) == int(served) + 1, put.text
    _live_after(stack, "/back/x")
