"""Test harness: a gateway config on free ports, and the real processes of the stack."""

from __future__ import annotations

import copy
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from outrider.config import load_config
from outrider.devtoken import mint_dev_token
from outrider.process import ManagedProcess, free_port
from outrider.supervisor import plan_processes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "examples" / "gateway.yaml"
KEYS_DIR = ROOT / "examples" / "keys"


def example_config_dict() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    return data


def with_free_ports(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config dict with every port replaced by a free one and key paths made absolute."""
    data = copy.deepcopy(data)
    taken: set[int] = set()

    def fresh() -> int:  # distinct within this config: the OS may hand out a just-released port again
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    data["listeners"][0]["port"] = fresh()
    data.setdefault("admin", {})["port"] = fresh()
    services = data.setdefault("services", {})
    demo_port = fresh()
    services.setdefault("demo_upstream", {})["port"] = demo_port
    for upstream in data.get("upstreams", []):
        for endpoint in upstream["endpoints"]:
            if endpoint["port"] == 18080:
                endpoint["port"] = demo_port
    for name, svc in services.items():
        for key in ("port", "metrics_port", "admin_port"):
            if key in svc and not (name == "demo_upstream" and key == "port"):
                svc[key] = fresh()
    services.setdefault("ext_authz", {}).setdefault("metrics_port", fresh())
    services["ext_authz"].setdefault("port", fresh())
    for provider in data["auth"]["providers"]:
        if "jwks_file" in provider and not Path(provider["jwks_file"]).is_absolute():
            provider["jwks_file"] = str(EXAMPLE_CONFIG.parent / provider["jwks_file"])
    data.setdefault("logging", {})["level"] = "info"
    return data


@dataclass
class Stack:
    """A running gateway: Envoy + ext_authz + demo upstream, on free ports."""

    config_path: Path
    data: dict[str, Any]
    workdir: Path
    procs: dict[str, ManagedProcess] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.data['listeners'][0]['port']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.data['admin']['port']}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0)

    def token(self, sub: str = "alice", roles: tuple[str, ...] = ("user",), tier: str = "free",
              ttl_s: int = 600, email: str | None = None) -> str:
        provider = self.data["auth"]["providers"][0]
        return mint_dev_token(KEYS_DIR, provider["issuer"], provider["audiences"][0],
                              subject=sub, roles=list(roles), tier=tier, ttl_s=ttl_s, email=email)

    def start(self) -> Stack:
        config = load_config(self.config_path)
        for proc in plan_processes(config, self.config_path, self.workdir, log_dir=self.workdir):
            proc.cwd = ROOT
            self.procs[proc.name] = proc.start()
            proc.wait_ready(30)
        self.wait_until(lambda: self.get("/health/ready").status_code == 200, what="/health/ready")
        return self

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.client() as client:
            return client.get(path, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self.client() as client:
            return client.request(method, path, **kwargs)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()

    @staticmethod
    def wait_until(predicate: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")


def child_pids(pid: int) -> set[int]:
    """The direct children of a process (what a supervisor started)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)
    return {int(p) for p in out.stdout.split()}


def write_config(data: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
