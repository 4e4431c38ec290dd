"""`python -m outrider.combined`: ext_authz, the rate limit service and ext_proc in one process, behind a real
Envoy whose config is unchanged (each gRPC cluster still points at its service's port)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from outrider.config import load_config
from outrider.envoy_config import compile_bootstrap
from outrider.process import ManagedProcess, grpc_serving, http_ready, tcp_ready
from outrider.supervisor import envoy_argv
from tests.harness import ROOT, Stack, example_config_dict, with_free_ports, write_config


@pytest.fixture(scope="module")
def combined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, ManagedProcess]]:
    workdir = tmp_path_factory.mktemp("combined")
    data = with_free_ports(example_config_dict())
    data["services"]["xds"]["enabled"] = False  # standalone: the one process reads the file
    config_path = write_config(data, workdir / "gateway.yaml")
    config = load_config(config_path)
    bootstrap = workdir / "envoy.yaml"
    bootstrap.write_text(yaml.safe_dump(compile_bootstrap(config), sort_keys=False))
    services = [grpc_serving("127.0.0.1", data["services"][name]["port"]) for name in ("ext_authz", "ratelimit",
                                                                                     "ext_proc")]
    demo = data["services"]["demo_upstream"]
    procs = [
        ManagedProcess("demo", [sys.executable, "-m", "outrider.demo_upstream", "--port", str(demo["port"])],
                       ready=tcp_ready("127.0.0.1", demo["port"])),
        ManagedProcess("combined", [sys.executable, "-m", "outrider.combined", "--config", str(config_path)],
                       ready=lambda: all(check() for check in services)),
        ManagedProcess("envoy", envoy_argv(bootstrap),
                       ready=http_ready(f"http://127.0.0.1:{data['admin']['port']}/ready")),
    ]
    stack = Stack(config_path, data, workdir)
    try:
        for proc in procs:
            proc.cwd, proc.log_path = ROOT, workdir / f"{proc.name}.log"
            proc.start().wait_ready(60)
        stack.wait_until(lambda: stack.get("/health/ready").status_code == 200, what="/health/ready")
        yield stack, procs[1]
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_every_service_answers_from_one_process(combined: tuple[Stack, ManagedProcess]) -> None:
    stack, process = combined
    assert stack.get("/api/v1/users/profile").status_code == 401  # ext_authz
    ok = stack.get("/api/v1/users/profile", headers={"authorization": f"Bearer {stack.token(tier='premium')}"})
    assert ok.status_code == 200
    assert ok.headers["ratelimit-limit"] == "100"  # the rate limit service: the endpoint's 100/s is the nearest
    assert ok.json()["api_version"] == "v1"  # ext_proc's response transformation
    assert ok.json()["headers"]["x-user-tier"] == "premium"
    public = stack.get("/api/v1/public/items/1")
    assert public.headers["x-cache-status"] in ("MISS", "HIT")  # ext_proc's cache
    # One /metrics for the process, with every service's families.
    metrics = httpx.get(f"http://127.0.0.1:{stack.data['services']['ext_authz']['metrics_port']}/metrics",
                        timeout=5).text
    for family in ("authz_checks_total", "rate_limit_hits_total", "ext_proc_events_total"):
        assert family in metrics, family
    assert process.proc is not None and process.proc.poll() is None


def test_config_change_reaches_every_service(combined: tuple[Stack, ManagedProcess], tmp_path: Path) -> None:
    stack, _ = combined
    data = stack.data
    profile = next(e for e in data["rate_limits"]["endpoints"] if e.get("path") == "/api/v1/users/profile")
    profile["limit"]["requests_per_unit"] = 7
    write_config(data, stack.config_path)
    token = stack.token(sub="bob", tier="premium")
    stack.wait_until(lambda: stack.get("/api/v1/users/profile", headers={"authorization": f"Bearer {token}"})
                     .headers.get("ratelimit-limit") == "7", what="the new endpoint limit")


def _total(stack: Stack, service: str, family: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.data['services'][service]['metrics_port']}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(family + "{"))


def test_three_processes_isolate_a_crash(own_stack: Stack) -> None:
    """Why three processes stay the default: ext_proc SIGKILLed, ext_authz and the rate limit service keep
    deciding (their own counts move) and keep running; only ext_proc's hop fails, by its failure mode
    (failure_mode_allow false: 500 — also for ext_authz's 401, whose response ext_proc would have seen)."""
    token = {"authorization": f"Bearer {own_stack.token(sub='carol')}"}
    assert own_stack.get("/api/v1/users/profile", headers=token).status_code == 200
    own_stack.procs["ext_proc"].kill()
    checks, hits = _total(own_stack, "ext_authz", "authz_checks_total"), _total(own_stack, "ratelimit",
                                                                                "rate_limit_hits_total")
    assert own_stack.get("/api/v1/users/profile", headers=token).status_code == 500  # ext_proc's hop, fail closed
    assert _total(own_stack, "ext_authz", "authz_checks_total") == checks + 1  # still decided
    assert _total(own_stack, "ratelimit", "rate_limit_hits_total") > hits  # still counted
    assert own_stack.get("/health/live").status_code == 200  # no ext_proc on it
    for name in ("ext_authz", "ratelimit"):
        proc = own_stack.procs[name].proc
        assert proc is not None and proc.poll() is None
