"""The control plane behind a real Envoy: runtime route changes, refusals, NACK rollback, load balancing."""

from __future__ import annotations

import collections
import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
import yaml

from outrider.config import config_from_data
from outrider.envoy_ads import compile_ads_bootstrap
from outrider.process import ManagedProcess, free_port, http_ready
from outrider.supervisor import envoy_argv
from tests.harness import ROOT, Stack
from tests.xds.conftest import Backends, xds_admin

PUBLIC = {"upstream": "demo", "public": True}


def _cluster(name: str, ports: list[int], **settings: Any) -> dict[str, Any]:
    weights = settings.pop("weights", [1] * len(ports))
    return {
        "name": name,
        "endpoints": [{"address": "127.0.0.1", "port": p, "weight": w} for p, w in zip(ports, weights, strict=True)],
        **settings,
    }


def _rds_version(stack: Stack) -> str:
    dump = httpx.get(f"{stack.admin_url}/config_dump?resource=dynamic_route_configs", timeout=5).json()
    return str(dump["configs"][0]["version_info"])


def test_route_added_serves_at_once_and_deleted_gives_404(xds_stack: Stack) -> None:
    with xds_admin(xds_stack) as admin:
        assert xds_stack.get("/added/x").status_code == 404
        put = admin.put("/v1/routes/added", json={"match": {"prefix": "/added/"}, **PUBLIC})
        assert put.status_code == 200, put.text
        # Envoy and every service of the gateway the stack started (each an ADS client of the control plane).
        services = {f"outrider-gateway/{name}" for name in ("ext_authz", "ratelimit", "ext_proc")
                    if name in xds_stack.procs}
        assert set(put.json()["acked_by"]) == {"outrider-gateway", *services}
        # The API answers once Envoy has ACKed: the very next request is routed.
        response = xds_stack.get("/added/x")
        assert response.status_code == 200 and response.json()["path"] == "/added/x"
        listed = admin.get("/v1/routes").json()
        assert listed["version"] == put.json()["version"]
        assert {"name": "added", "match": {"prefix": "/added/"}, "upstream": "demo", "public": True} in listed["routes"]
        assert admin.delete("/v1/routes/added").status_code == 200
        assert xds_stack.get("/added/x").status_code == 404
        assert admin.delete("/v1/routes/added").status_code == 404


def test_invalid_route_and_missing_cluster_are_refused_before_any_push(xds_stack: Stack) -> None:
    with xds_admin(xds_stack) as admin:
        version, rds = admin.get("/v1/routes").json()["version"], _rds_version(xds_stack)
        missing = admin.put("/v1/routes/lost", json={"match": {"prefix": "/lost/"}, "upstream": "nope", "public": True})
        assert missing.status_code == 422
        assert missing.json()["problems"][0]["field"].endswith(".upstream")
        assert "unknown upstream 'nope'" in missing.json()["problems"][0]["reason"]
        typo = admin.put("/v1/routes/typo", json={"match": {"prefix": "/t/"}, "upstreem": "demo", "public": True})
        assert typo.status_code == 422
        assert {"field": "routes.typo.upstreem", "reason": "unknown field"} in typo.json()["problems"]
        bad_json = admin.put("/v1/routes/x", content=b"{nope", headers={"content-type": "application/json"})
        assert bad_json.status_code == 400
        assert admin.get("/v1/routes").json()["version"] == version
        assert _rds_version(xds_stack) == rds  # Envoy got nothing


def test_change_nacked_by_envoy_is_rolled_back_and_reported(xds_stack: Stack, tmp_path: Path) -> None:
    # The control plane refuses what Envoy's defaults refuse (RE2 syntax, program size ≤ 100) before any push;
    # a second replica whose operator set a stricter runtime limit is what can still refuse a valid change.
    config = config_from_data(xds_stack.data)
    admin_port = free_port()
    bootstrap = compile_ads_bootstrap(config)
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = admin_port
    bootstrap["layered_runtime"] = {"layers": [{"name": "strict", "static_layer": {
        "re2.max_program_size.error_level": 90}}]}  # our own listener regex is 88
    path = tmp_path / "strict-bootstrap.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    strict = ManagedProcess("envoy-strict", envoy_argv(path), ready=http_ready(f"http://127.0.0.1:{admin_port}/ready"),
                            log_path=tmp_path / "envoy-strict.log", cwd=ROOT)
    strict.start()
    try:
        strict.wait_ready(30)
        with xds_admin(xds_stack) as admin:
            Stack.wait_until(lambda: admin.get("/v1/status").json()["nodes"]["outrider-gateway"]["connected_streams"]
                             == 2, what="both Envoys on ADS")
            version = admin.get("/v1/routes").json()["version"]
            response = admin.put("/v1/routes/complex", json={"match": {"regex": "/complex/[a-z]{1,40}/x"},
                                                                  **PUBLIC})  # program size 94
            assert response.status_code == 409, response.text
            body = response.json()
            assert body["version"] == version and body["nacks"][0]["type"] == "rds"
            assert "program size" in body["nacks"][0]["error"]
            assert "complex" not in {r["name"] for r in admin.get("/v1/routes").json()["routes"]}
            status = admin.get("/v1/status").json()["nodes"]["outrider-gateway"]
            assert status["last_nack"]["type"] == "rds" and status["last_nack"]["version"] == body["rejected_version"]
            # Both Envoys share the node id; the status holds the last ACK of either, and the rollback's ACKs
            # arrive after the 409: wait for them rather than read a moment too early.
            Stack.wait_until(lambda: admin.get("/v1/status").json()["nodes"]["outrider-gateway"]["acked"]["rds"]
                             == _rds_version(xds_stack), what="the rollback ACKed")
        assert xds_stack.get("/complex/abc/x").status_code == 404  # rolled back on the Envoy that accepted it too
        assert xds_stack.get("/api/v1/public/still").status_code == 200
    finally:
        strict.stop()


def test_weighted_split(xds_stack: Stack, backends: Backends) -> None:
    heavy, light = backends.start(2)
    with xds_admin(xds_stack) as admin:
        assert (
            admin.put("/v1/clusters/split", json=_cluster("split", [heavy, light], weights=[4, 1])).status_code == 200
        )
        assert (
            admin.put(
                "/v1/routes/split", json={"match": {"prefix": "/split/"}, "upstream": "split", "public": True}
            ).status_code
            == 200
        )
    with xds_stack.client() as client:
        seen = collections.Counter(client.get("/split/x").json()["port"] for _ in range(1000))
    assert abs(seen[heavy] / 1000 - 0.8) < 0.05, seen


def test_ring_hash_keeps_a_user_on_one_endpoint(xds_stack: Stack, backends: Backends) -> None:
    ports = backends.start(3)
    with xds_admin(xds_stack) as admin:
        cluster = _cluster("sticky", ports, lb_policy="ring_hash", hash_policy=[{"header": "x-user"}])
        assert admin.put("/v1/clusters/sticky", json=cluster).status_code == 200
        assert (
            admin.put(
                "/v1/routes/sticky", json={"match": {"prefix": "/sticky/"}, "upstream": "sticky", "public": True}
            ).status_code
            == 200
        )
    placed: dict[str, set[int]] = {}
    with xds_stack.client() as client:
        for user in range(30):
            for _ in range(5):
                port = client.get("/sticky/x", headers={"x-user": f"user-{user}"}).json()["port"]
                placed.setdefault(f"user-{user}", set()).add(port)
    assert all(len(p) == 1 for p in placed.values()), placed
    assert len({next(iter(p)) for p in placed.values()}) > 1  # users are spread, each one stays put


def test_least_request_prefers_the_idle_endpoint(xds_stack: Stack, backends: Backends) -> None:
    busy, idle = backends.start(2)
    with xds_admin(xds_stack) as admin:
        assert (
            admin.put("/v1/clusters/lr", json=_cluster("lr", [busy, idle], lb_policy="least_request")).status_code
            == 200
        )
        assert (
            admin.put("/v1/routes/lr", json={"match": {"prefix": "/lr/"}, "upstream": "lr", "public": True}).status_code
            == 200
        )
    # The busy endpoint holds every request a while, so requests stay active there; the idle one answers at once.
    backends.control(busy, hold_ms=300)

    def call(_: int) -> int:
        with httpx.Client(base_url=xds_stack.url, timeout=20) as client:
            return int(client.get("/lr/x").json()["port"])

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        seen = collections.Counter(pool.map(call, range(100)))
    # Round robin would split 50/50; least request (power of two choices) sends the busy one ~25%.
    assert seen[busy] < 40 and seen[idle] > 60, seen


def test_outlier_detection_ejects_a_failing_endpoint(xds_stack: Stack, backends: Backends) -> None:
    bad, good = backends.start(2)
    backends.control(bad, status=500)
    with xds_admin(xds_stack) as admin:
        cluster = _cluster(
            "flaky",
            [bad, good],
            outlier_detection={
                "consecutive_5xx": 3,
                "interval_ms": 200,
                "base_ejection_time_ms": 30000,
                "max_ejection_percent": 50,
            },
        )
        assert admin.put("/v1/clusters/flaky", json=cluster).status_code == 200
        assert (
            admin.put(
                "/v1/routes/flaky", json={"match": {"prefix": "/flaky/"}, "upstream": "flaky", "public": True}
            ).status_code
            == 200
        )
    with xds_stack.client() as client:
        first = [client.get("/flaky/x").status_code for _ in range(20)]
        after = [client.get("/flaky/x").status_code for _ in range(30)]
    assert first.count(500) >= 1 and after == [200] * 30
    stats = httpx.get(
        f"{xds_stack.admin_url}/stats?filter=cluster.flaky.outlier_detection.ejections_enforced_total", timeout=5
    ).text
    assert int(stats.strip().rsplit(" ", 1)[1]) >= 1


def test_active_health_check_removes_a_dead_endpoint(xds_stack: Stack, backends: Backends) -> None:
    dying, alive = backends.start(2)
    with xds_admin(xds_stack) as admin:
        cluster = _cluster(
            "checked",
            [dying, alive],
            health_check={"path": "/_health", "interval_ms": 200, "timeout_ms": 100, "unhealthy_threshold": 1},
        )
        assert admin.put("/v1/clusters/checked", json=cluster).status_code == 200
        assert (
            admin.put(
                "/v1/routes/checked", json={"match": {"prefix": "/checked/"}, "upstream": "checked", "public": True}
            ).status_code
            == 200
        )
    backends.procs[dying].kill()

    def marked_failed() -> bool:
        clusters = httpx.get(f"{xds_stack.admin_url}/clusters", timeout=5).text
        return f"checked::127.0.0.1:{dying}::health_flags::/failed_active_hc" in clusters

    Stack.wait_until(marked_failed, what="the dead endpoint marked unhealthy")
    with xds_stack.client() as client:
        assert [client.get("/checked/x").json()["port"] for _ in range(20)] == [alive] * 20
