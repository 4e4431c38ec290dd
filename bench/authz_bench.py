"""ext_authz benchmark: Envoy alone vs Envoy + always-allow floor vs Envoy + outrider ext_authz.

Prints a table: saturation requests/s (wrk), latency at a fixed 1,000 req/s (h2load open loop), and CPU
of the authorizer process per check, with the ratio to the floor measured in the same run.
Run: .venv/bin/python bench/authz_bench.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from envoy.service.auth.v3 import external_auth_pb2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (
    cpu_seconds,
    h2load_fixed_rate,
    machine_summary,
    print_table,
    rss_mib,
    tool_version,
    wrk,
)
from outrider.config import load_config
from outrider.devtoken import mint_dev_token
from outrider.envoy_config import compile_bootstrap
from outrider.process import ManagedProcess, free_port, http_ready
from outrider.supervisor import envoy_argv, envoy_binary


def bench_config(workdir: Path, authz_port: int) -> tuple[Path, dict[str, Any]]:
    """The example config plus two direct-response routes, so no upstream limits the figures."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "gateway.yaml").read_text())
    data["listeners"][0]["port"] = free_port()
    data["admin"]["port"] = free_port()
    data["services"]["ext_authz"].update({"port": authz_port, "metrics_port": free_port()})
    data["services"]["demo_upstream"] = {"enabled": False}
    for key in list(data["services"]):
        if key not in ("ext_authz", "demo_upstream"):
            data["services"].pop(key)  # other services are benchmarked in their own scripts
    for key in list(data):
        if key not in ("listeners", "admin", "services", "upstreams", "routes", "auth", "rbac", "logging"):
            data.pop(key)
    data["routes"] = [
        {"name": "open", "match": {"path": "/bench/open"}, "direct_response": {"status": 200, "body": "{}"}},
        {"name": "checked", "match": {"path": "/bench/checked"}, "resource": "profile",
         "direct_response": {"status": 200, "body": "{}"}},
        *[{k: v for k, v in r.items() if not k.startswith(("rate", "transform", "cache", "validation"))}
          for r in data["routes"]],
    ]
    data["auth"]["providers"][0]["jwks_file"] = str(ROOT / "examples" / "keys" / "jwks.json")
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, data


def check_request_frame(token: str) -> bytes:
    """A realistic CheckRequest (the headers Envoy sends for a wrk request) as one gRPC frame."""
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.id, http.host, http.protocol = "GET", "/bench/checked", "4f1c", "127.0.0.1", "HTTP/1.1"
    for key, value in {":authority": "127.0.0.1", ":path": "/bench/checked", ":method": "GET",
                       ":scheme": "http", "authorization": f"Bearer {token}", "x-request-id": "4f1c",
                       "x-forwarded-proto": "http", "user-agent": "wrk"}.items():
        http.headers[key] = value
    request.attributes.context_extensions["resource"] = "profile"
    request.attributes.context_extensions["route"] = "checked"
    payload = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def grpc_direct(port: int, frame_path: Path, calls: int, pid: int) -> tuple[float, float]:
    """h2load straight at the gRPC server (no Envoy): calls/s and CPU µs per call of the server."""
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    subprocess.run(["h2load", "-n", str(calls), "-c", "4", "-m", "8", f"--data={frame_path}",
                    "-H", "content-type: application/grpc", "-H", "te: trailers",
                    f"http://127.0.0.1:{port}/envoy.service.auth.v3.Authorization/Check"],
                   capture_output=True, check=True, timeout=120)
    elapsed = time.perf_counter() - t0
    return calls / elapsed, (cpu_seconds(pid) - cpu0) / calls * 1e6


def wait_checked(url: str, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} never answered 200")


def run(seconds: int, rate: int, rounds: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="authz-bench-"))
    authz_port = free_port()
    config_path, data = bench_config(workdir, authz_port)
    config = load_config(config_path)
    bootstrap = workdir / "envoy.yaml"
    bootstrap.write_text(yaml.safe_dump(compile_bootstrap(config), sort_keys=False))
    envoy = ManagedProcess("envoy", envoy_argv(bootstrap), log_path=workdir / "envoy.log",
                           ready=http_ready(f"http://127.0.0.1:{data['admin']['port']}/ready"))
    base = f"http://127.0.0.1:{data['listeners'][0]['port']}"
    provider = data["auth"]["providers"][0]
    token = mint_dev_token(ROOT / "examples" / "keys", provider["issuer"], provider["audiences"][0],
                           subject="bench", roles=["user"], tier="free", ttl_s=3600)
    auth = {"authorization": f"Bearer {token}"}
    frame = workdir / "check.bin"
    frame.write_bytes(check_request_frame(token))
    servers = {
        "always-allow floor": [sys.executable, str(ROOT / "bench" / "trivial_authz.py"), "--port", str(authz_port)],
        "outrider ext_authz": [sys.executable, "-m", "ext_authz", "--config", str(config_path)],
    }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    envoy.start().wait_ready(30)
    try:
        sat = wrk(f"{base}/bench/open", {}, seconds)
        fixed = h2load_fixed_rate(f"{base}/bench/open", {}, rate, seconds)
        baseline = {"rps": sat.rps, "p50": fixed.p50_ms, "p90": fixed.p90_ms, "p99": fixed.p99_ms}
        # Interleave the servers round by round so drift in the machine's load hits both alike.
        for _ in range(rounds):
            for name, argv in servers.items():
                proc = ManagedProcess(name, argv, log_path=workdir / f"{name.replace(' ', '_')}.log", cwd=ROOT)
                proc.start()
                wait_checked(f"{base}/bench/checked", auth)
                assert proc.proc is not None
                pid = proc.proc.pid
                wrk(f"{base}/bench/checked", auth, 1)  # warm up: token cached, connections open
                sat = wrk(f"{base}/bench/checked", auth, seconds)
                cpu0 = cpu_seconds(pid)
                fixed = h2load_fixed_rate(f"{base}/bench/checked", auth, rate, seconds)
                fixed_cpu = (cpu_seconds(pid) - cpu0) / max(fixed.requests, 1) * 1e6
                direct_rps, direct_cpu = grpc_direct(authz_port, frame, 20_000, pid)
                samples[name].append({"rps": sat.rps, "non2xx": sat.non_2xx + fixed.non_2xx,
                                      "p50": fixed.p50_ms, "p90": fixed.p90_ms, "p99": fixed.p99_ms,
                                      "cpu_1k": fixed_cpu, "direct_rps": direct_rps, "direct_cpu": direct_cpu,
                                      "rss": rss_mib(pid)})
                proc.stop()
    finally:
        envoy.stop()

    def med(name: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[name])

    floor = "always-allow floor"
    rows = [["Envoy alone (no check)", f"{baseline['rps']:,.0f}", f"{baseline['p50']:.2f}",
             f"{baseline['p90']:.2f}", f"{baseline['p99']:.2f}", "—", "—", "—", "—", "—", "—"]]
    for name in servers:
        rows.append([
            f"+ {name}", f"{med(name, 'rps'):,.0f}", f"{med(name, 'p50'):.2f}", f"{med(name, 'p90'):.2f}",
            f"{med(name, 'p99'):.2f}", f"{med(name, 'p99') - baseline['p99']:+.2f}",
            f"{med(name, 'cpu_1k'):.0f} ({med(name, 'cpu_1k') / med(floor, 'cpu_1k'):.2f}×)",
            f"{med(name, 'direct_rps'):,.0f}",
            f"{med(name, 'direct_cpu'):.0f} ({med(name, 'direct_cpu') / med(floor, 'direct_cpu'):.2f}×)",
            f"{max(s['rss'] for s in samples[name]):.0f}", f"{sum(s['non2xx'] for s in samples[name]):.0f}"])
    envoy = tool_version([envoy_binary(), "--version"], r"/(\d+\.\d+\.\d+)/")
    print(f"\nmachine: {machine_summary()}; date: {datetime.date.today()}; Envoy {envoy}, "
          f"--concurrency 2. Load on the same box: wrk -t1 -c32 {seconds}s (saturation); h2load --h1 -c10 "
          f"open loop at {rate} req/s for {seconds}s (latency, CPU); h2load gRPC -c4 -m8 20k calls straight "
          f"at the service (direct). Medians of {rounds} interleaved rounds.\n")
    print_table("ext_authz through Envoy (cached RS256 token)",
                ["scenario", "req/s sat.", "p50 ms", "p90 ms", "p99 ms", "added p99 ms",
                 f"CPU µs/check @{rate}/s (vs floor)", "direct calls/s", "direct CPU µs/call (vs floor)",
                 "peak RSS MiB", "non-2xx"], rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run(args.seconds, args.rate, args.rounds)


if __name__ == "__main__":
    main()
