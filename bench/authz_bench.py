"""ext_authz benchmark: Envoy alone vs Envoy + always-allow floor vs Envoy + outrider ext_authz.

Prints a table: saturation requests/s (wrk), latency at a fixed 1,000 req/s (h2load open loop), and CPU
of the authorizer process per check, with the ratio to the floor measured in the same run.
Run: .venv/bin/python bench/authz_bench.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    cpu_seconds,
    h2load_fixed_rate,
    machine_summary,
    print_table,
    rss_mib,
    wrk,
)
from outrider.config import load_config  # noqa: E402
from outrider.devtoken import mint_dev_token  # noqa: E402
from outrider.envoy_config import compile_bootstrap  # noqa: E402
from outrider.process import ManagedProcess, free_port, http_ready  # noqa: E402
from outrider.supervisor import envoy_argv  # noqa: E402


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


def run(seconds: int, rate: int) -> None:
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
    servers = {
        "always-allow floor": [sys.executable, str(ROOT / "bench" / "trivial_authz.py"), "--port", str(authz_port)],
        "outrider ext_authz": [sys.executable, "-m", "ext_authz", "--config", str(config_path)],
    }
    rows: list[list[str]] = []
    envoy.start().wait_ready(30)
    try:
        sat = wrk(f"{base}/bench/open", {}, seconds)
        fixed = h2load_fixed_rate(f"{base}/bench/open", {}, rate, seconds)
        baseline_p99 = fixed.p99_ms
        rows.append(["Envoy alone (no check)", f"{sat.rps:,.0f}", f"{fixed.p50_ms:.2f}", f"{fixed.p90_ms:.2f}",
                     f"{fixed.p99_ms:.2f}", "—", "—", "—", "—"])
        floor_cpu_us = None
        for name, argv in servers.items():
            proc = ManagedProcess(name, argv, log_path=workdir / f"{name.replace(' ', '_')}.log",
                                  cwd=ROOT, ready=http_ready(f"{base}/bench/checked", 200)
                                  if False else None)
            proc.start()
            probe = http_ready(f"{base}/bench/checked")
            import time
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                import urllib.request
                try:
                    req = urllib.request.Request(f"{base}/bench/checked", headers=auth)
                    with urllib.request.urlopen(req, timeout=1) as r:  # noqa: S310
                        if r.status == 200:
                            break
                except Exception:
                    time.sleep(0.1)
            del probe
            assert proc.proc is not None
            pid = proc.proc.pid
            wrk(f"{base}/bench/checked", auth, 1)  # warm up: token cached, connections open
            cpu0 = cpu_seconds(pid)
            sat = wrk(f"{base}/bench/checked", auth, seconds)
            sat_cpu_us = (cpu_seconds(pid) - cpu0) / max(sat.requests, 1) * 1e6
            cpu0 = cpu_seconds(pid)
            fixed = h2load_fixed_rate(f"{base}/bench/checked", auth, rate, seconds)
            fixed_cpu_us = (cpu_seconds(pid) - cpu0) / max(fixed.requests, 1) * 1e6
            if floor_cpu_us is None:
                floor_cpu_us = fixed_cpu_us
            ratio = fixed_cpu_us / floor_cpu_us
            rows.append([f"+ {name}", f"{sat.rps:,.0f}" + (f" ({sat.non_2xx} non-2xx)" if sat.non_2xx else ""),
                         f"{fixed.p50_ms:.2f}", f"{fixed.p90_ms:.2f}", f"{fixed.p99_ms:.2f}",
                         f"{fixed.p99_ms - baseline_p99:+.2f}", f"{sat_cpu_us:.0f} / {fixed_cpu_us:.0f}",
                         f"{ratio:.2f}×", f"{rss_mib(pid):.0f}"])
            proc.stop()
    finally:
        envoy.stop()
    print(f"\nmachine: {machine_summary()}; date: {datetime.date.today()}; "
          f"load: wrk -t1 -c32 {seconds}s (saturation), h2load --h1 -c10 at {rate} req/s for {seconds}s "
          f"(latency); Envoy --concurrency 2; all on this box\n")
    print_table("ext_authz through Envoy (cached RS256 token)",
                ["scenario", "req/s (sat.)", "p50 ms", "p90 ms", "p99 ms", "added p99 ms",
                 "CPU µs/check sat./1k", "CPU ratio to floor", "peak RSS MiB"], rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rate", type=int, default=1000)
    args = parser.parse_args()
    run(args.seconds, args.rate)


if __name__ == "__main__":
    main()
