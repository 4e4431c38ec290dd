"""Control plane resilience behind a real Envoy: file edits, kill and restart, delta and SotW alike."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from outrider.config import config_from_data
from outrider.envoy_ads import compile_ads_bootstrap
from outrider.process import ManagedProcess, free_port, http_ready
from outrider.supervisor import envoy_argv
from tests.conftest import start_stack
from tests.harness import ROOT, Stack, write_config
from tests.xds.conftest import xds_admin, xds_data


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("xds-resilience"), xds_data())
    yield running
    running.stop()


def _stat(stack: Stack, name: str) -> int:
    text = httpx.get(f"{stack.admin_url}/stats?filter=^{name}$", timeout=5).text.strip()
    return int(text.rsplit(" ", 1)[1]) if text else 0


def test_editing_the_config_file_changes_the_routes(stack: Stack) -> None:
    with xds_admin(stack) as admin:
        version = int(admin.get("/v1/routes").json()["version"])
        data = json.loads(json.dumps(stack.data))
        data["routes"].append({"name": "filed", "match": {"prefix": "/filed/"}, "upstream": "demo", "public": True})
        write_config(data, stack.config_path)
        Stack.wait_until(lambda: stack.get("/filed/x").status_code == 200, what="the route from the edited file")
        assert int(admin.get("/v1/routes").json()["version"]) == version + 1
        # A broken file is refused with file, field and reason; the running config stays.
        data["routes"].append({"name": "broken", "match": {"prefix": "/broken/"}, "upstream": "nope", "public": True})
        write_config(data, stack.config_path)
        log = stack.workdir / "xds_server.log"
        Stack.wait_until(lambda: "config file rejected" in log.read_text(), what="the rejection in the log")
        rejected = next(json.loads(line) for line in log.read_text().splitlines() if "config file rejected" in line)
        assert any(
            "routes[" in p and "upstream: unknown upstream 'nope'" in p and str(stack.config_path) in p
            for p in rejected["problems"]
        ), rejected
        assert int(admin.get("/v1/routes").json()["version"]) == version + 1
        assert stack.get("/filed/x").status_code == 200


def test_control_plane_killed_traffic_continues_restart_serves_same_version(stack: Stack) -> None:
    with xds_admin(stack) as admin:
        put = admin.put("/v1/routes/kept", json={"match": {"prefix": "/kept/"}, "upstream": "demo", "public": True})
        assert put.status_code == 200
        version = put.json()["version"]
    removed_before = (
        _stat(stack, "listener_manager.listener_removed"),
        _stat(stack, "cluster_manager.cluster_removed"),
    )
    xds = stack.procs["xds_server"]
    xds.kill()
    for path in ("/kept/a", "/api/v1/public/a"):
        assert stack.get(path).status_code == 200  # Envoy keeps serving its last config
    # A broken file at restart: the control plane serves its persisted state (file + the API's change).
    broken = json.loads(json.dumps(stack.data))
    broken["routes"].append({"name": "broken", "match": {"prefix": "/broken/"}, "upstream": "nope", "public": True})
    write_config(broken, stack.config_path)
    xds.start().wait_ready(30)
    with xds_admin(stack) as admin:
        listed = admin.get("/v1/routes").json()
        assert listed["version"] == version and "kept" in {r["name"] for r in listed["routes"]}

        def reconnected() -> bool:
            node = admin.get("/v1/status").json()["nodes"].get("outrider-gateway", {})
            return node.get("connected_streams", 0) >= 1 and node.get("acked", {}).get("rds") is not None

        Stack.wait_until(reconnected, what="Envoy back on the restarted control plane")
    # Nothing was emptied or removed on the way: the same listener and clusters, the same routes.
    assert (
        _stat(stack, "listener_manager.listener_removed"),
        _stat(stack, "cluster_manager.cluster_removed"),
    ) == removed_before
    assert stack.get("/kept/a").status_code == 200
    assert (stack.workdir / ".run" / "xds-state" / "state.json").exists()


def _dump(admin_url: str) -> dict[str, Any]:
    """Envoy's dynamic config without the version fields (SotW and delta version resources differently)."""
    dump = httpx.get(f"{admin_url}/config_dump", timeout=5).json()
    out: dict[str, Any] = {}
    for config in dump["configs"]:
        kind = config["@type"].rsplit(".", 1)[-1]
        if kind == "ClustersConfigDump":
            out["clusters"] = {c["cluster"]["name"]: c["cluster"] for c in config.get("dynamic_active_clusters", [])}
        elif kind == "ListenersConfigDump":
            out["listeners"] = {x["name"]: x["active_state"]["listener"] for x in config.get("dynamic_listeners", [])}
        elif kind == "RoutesConfigDump":
            out["routes"] = {
                r["route_config"]["name"]: r["route_config"] for r in config.get("dynamic_route_configs", [])
            }
    return out


def test_delta_and_state_of_the_world_envoys_converge(stack: Stack, tmp_path: Path) -> None:
    config = config_from_data(stack.data)  # the test's own copy: the file may hold anything by now
    admin_port = free_port()
    bootstrap = compile_ads_bootstrap(config, delta=True)
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = admin_port
    path = tmp_path / "delta-bootstrap.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    # Both Envoys bind the same listener port (SO_REUSEPORT), as two replicas of one gateway would.
    delta = ManagedProcess(
        "envoy-delta",
        envoy_argv(path),
        ready=http_ready(f"http://127.0.0.1:{admin_port}/ready"),
        log_path=tmp_path / "envoy-delta.log",
        cwd=ROOT,
    )
    delta.start()
    try:
        delta.wait_ready(30)
        delta_url = f"http://127.0.0.1:{admin_port}"
        assert _dump(delta_url) == _dump(stack.admin_url)
        with xds_admin(stack) as admin:
            put = admin.put("/v1/routes/both", json={"match": {"path": "/both"}, "upstream": "demo", "public": True})
            assert put.status_code == 200
            status = admin.get("/v1/status").json()["nodes"]["outrider-gateway"]
            assert status["connected_streams"] == 2
        # The change was answered after both Envoys ACKed it.
        after = _dump(delta_url)
        assert after == _dump(stack.admin_url)
        assert "both" in {r["name"] for r in after["routes"]["outrider_routes"]["virtual_hosts"][0]["routes"]}
    finally:
        delta.stop()
