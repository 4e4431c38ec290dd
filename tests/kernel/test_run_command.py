"""`outrider run` starts the whole stack on a config and stops every child on SIGTERM / Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import ROOT, Stack, child_pids, example_config_dict, with_free_ports, write_config


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_then_stops_everything(tmp_path: Path, sig: signal.Signals) -> None:
    data = with_free_ports(example_config_dict())
    config = write_config(data, tmp_path / "gateway.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "outrider", "run", str(config), "--run-dir", str(tmp_path / "run")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{data['listeners'][0]['port']}"
    try:
        deadline = time.monotonic() + 120  # a loaded 2-core CI box starts six processes
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    ready = True
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert ready, proc.stdout.read() if proc.stdout and proc.poll() is not None else "not ready"
        assert httpx.get(f"{url}/api/v1/public/hello", timeout=5).status_code == 200
        assert httpx.get(f"{url}/api/v1/users/me", timeout=5).status_code == 401
        children = child_pids(proc.pid)
        assert len(children) >= 3  # demo upstream, ext_authz, envoy (and later services)
        proc.send_signal(sig)
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.1)
        assert not [c for c in children if _alive(c)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_restart_policy_backs_off_then_gives_up() -> None:
    from outrider.supervisor import RestartPolicy

    policy = RestartPolicy(limit=3, window_s=60, first_delay_s=0.5, max_delay_s=1.5)
    assert [policy.on_crash("authz", t) for t in (0, 1, 2)] == [0.5, 1.0, 1.5]
    assert policy.on_crash("authz", 3) is None          # a 4th crash within the window: give up
    assert policy.on_crash("ratelimit", 3) == 0.5       # per child
    assert policy.on_crash("authz", 200) == 0.5         # old crashes age out of the window


def test_run_restarts_a_crashed_service(tmp_path: Path) -> None:
    data = with_free_ports(example_config_dict())
    config = write_config(data, tmp_path / "gateway.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "outrider", "run", str(config), "--run-dir", str(tmp_path / "run")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{data['listeners'][0]['port']}"
    metrics = f"http://127.0.0.1:{data['services']['ext_authz']['metrics_port']}/metrics"

    try:
        Stack.wait_until(lambda: httpx.get(f"{url}/health/ready", timeout=1).status_code == 200, 60, "ready")
        authz = next(pid for pid in child_pids(proc.pid)
                     if "ext_authz" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
        os.kill(authz, signal.SIGKILL)
        Stack.wait_until(lambda: not _alive(authz), 60, "the old ext_authz to go")
        Stack.wait_until(lambda: httpx.get(metrics, timeout=1).status_code == 200, 60, "ext_authz to come back")
        Stack.wait_until(lambda: httpx.get(f"{url}/api/v1/users/me", timeout=2).status_code == 401, 60,
                         "checks to flow")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ports(data: dict) -> list[int]:  # type: ignore[type-arg]
    ports = [data["listeners"][0]["port"], data["admin"]["port"]]
    for svc in data["services"].values():
        ports += [svc[key] for key in ("port", "metrics_port", "admin_port") if key in svc]
    return ports


def _bindable(port: int) -> bool:
    """Whether a server could listen on the port now (SO_REUSEADDR, as Envoy and our servers bind)."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_supervisor_killed_hard_leaves_no_orphan_holding_a_port(tmp_path: Path) -> None:
    data = with_free_ports(example_config_dict())
    config = write_config(data, tmp_path / "gateway.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "outrider", "run", str(config), "--run-dir", str(tmp_path / "run")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{data['listeners'][0]['port']}"
    children: set[int] = set()
    try:
        Stack.wait_until(lambda: httpx.get(f"{url}/health/ready", timeout=1).status_code == 200, 60, "the stack")
        children = child_pids(proc.pid)
        assert len(children) >= 6  # demo upstream, xds_server, ext_authz, ratelimit, ext_proc, envoy
        ports = _ports(data)
        assert not any(_bindable(p) for p in ports)  # all held while the stack runs
        proc.kill()  # SIGKILL: the supervisor gets no chance to stop anyone (as with the OOM killer)
        proc.wait(5)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not all(_bindable(p) for p in ports):
            time.sleep(0.02)
        assert [p for p in ports if not _bindable(p)] == []
        Stack.wait_until(lambda: not any(_alive(c) for c in children), 5, "the children to be gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children:  # never leave a stray process behind a failed test
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
