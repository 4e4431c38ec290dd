"""Helpers of the xds tests: gateway configs from the example, stacks on ADS, test backends."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from outrider.config import GatewayConfig, config_from_data
from outrider.process import ManagedProcess, free_port, tcp_ready
from outrider.supervisor import DEV_ADMIN_TOKEN_FILE
from tests.conftest import start_stack
from tests.harness import ROOT, Stack, example_config_dict, with_free_ports


def gateway(
    routes: list[dict[str, Any]] | None = None,
    upstreams: list[dict[str, Any]] | None = None,
    free_ports: bool = False,
    full: bool = False,
) -> GatewayConfig:
    """The example config (without the other services' sections unless full) plus routes and upstreams."""
    data = example_config_dict() if full else core_example()
    if free_ports:
        data = with_free_ports(data)
    else:
        data["auth"]["providers"][0].pop("jwks_file")
        data["auth"]["providers"][0]["jwks_url"] = "https://keys.example/jwks.json"
    data["routes"].extend(routes or [])
    data["upstreams"].extend(upstreams or [])
    return config_from_data(data)


def big_gateway(n_routes: int, n_clusters: int) -> GatewayConfig:
    """n_routes routes spread over n_clusters upstreams (the benchmark's shape)."""
    upstreams = [
        {
            "name": f"svc-{i}",
            "endpoints": [
                {"address": "127.0.0.1", "port": 20000 + i % 1000},
                {"address": "127.0.0.2", "port": 20000 + i % 1000},
            ],
        }
        for i in range(n_clusters)
    ]
    routes = [
        {
            "name": f"route-{i}",
            "match": {"prefix": f"/svc/{i}/"},
            "upstream": f"svc-{i % n_clusters}",
            "resource": "profile",
            "timeout_ms": 5000,
        }
        for i in range(n_routes)
    ]
    return gateway(routes, upstreams)


# --- real stacks ------------------------------------------------------------------------------------


def core_example() -> dict[str, Any]:
    """The example config without the other services' sections: these tests are about routing."""
    data = example_config_dict()
    data = {
        k: v
        for k, v in data.items()
        if k in ("listeners", "admin", "services", "upstreams", "routes", "auth", "rbac", "logging")
    }
    data["services"] = {k: v for k, v in data.get("services", {}).items() if k in ("ext_authz", "demo_upstream")}
    return data


def xds_data(protocol: str = "sotw") -> dict[str, Any]:
    data = core_example()
    data.setdefault("services", {})["xds"] = {
        "enabled": True,
        "port": 18000,
        "admin_port": 18001,
        "metrics_port": 19084,
        "protocol": protocol,
        "ack_timeout_ms": 5000,
        "watch_interval_ms": 100,
    }
    return data


def admin_token(stack: Stack) -> str:
    """The development admin token `outrider run` (the harness's supervisor plan) generated for the stack."""
    return (stack.workdir / DEV_ADMIN_TOKEN_FILE).read_text().strip()


def xds_admin(stack: Stack, token: str | None = None) -> httpx.Client:
    port = stack.data["services"]["xds"]["admin_port"]
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15.0,
                        headers={"Authorization": f"Bearer {token or admin_token(stack)}"})


@pytest.fixture(scope="module")
def xds_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("xds"), xds_data())
    yield running
    running.stop()


class Backends:
    """Test backends on free ports, one process each (so one can be killed)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[int, ManagedProcess] = {}

    def start(self, count: int) -> list[int]:
        ports = []
        for _ in range(count):
            port = free_port()
            proc = ManagedProcess(
                f"backend-{port}",
                [sys.executable, "-m", "tests.xds.backend", "--port", str(port)],
                ready=tcp_ready("127.0.0.1", port),
                log_path=self.workdir / f"backend-{port}.log",
                cwd=ROOT,
            )
            self.procs[port] = proc.start()
            ports.append(port)
        for port in ports:
            self.procs[port].wait_ready(20)
        return ports

    def control(self, port: int, **state: Any) -> None:
        httpx.post(f"http://127.0.0.1:{port}/_control", json=state, timeout=5).raise_for_status()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[Backends]:
    running = Backends(tmp_path)
    yield running
    running.stop()
