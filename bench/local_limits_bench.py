"""Tier limits counted by the rate limit service against counted in Envoy (`rate_limits.enforcement: local`).

Two Envoys (the gateway's own bootstrap, `outrider envoy-bootstrap`), one per mode, each with a second listener
answering as the origin (as bench/native_bench.py), and the same routes:
  proxy   public route, no limit: the baseline
  native  protected, `enforcement: native` (jwt_authn + rbac + Lua), the enterprise tier limit on it
service mode adds Envoy's rate limit filter and one ShouldRateLimit call per request to ratelimit_service (memory
store); local mode compiles the same plan into Envoy's local_ratelimit (ratelimit_service/local_limits.py).
The limit is never reached (10^9 a minute): this measures the cost of counting. Rounds are interleaved and the
median reported, with the CPU per request of Envoy and of the service (/proc).

Run: .venv/bin/python bench/local_limits_bench.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine_summary, print_table, wrk
from bench.gateway_bench import wait_ok
from bench.gateway_load import descendants, tree_cpu
from bench.gateway_setup import origin_listener, service_argv
from outrider.config import load_config
from outrider.devtoken import mint_dev_token
from outrider.envoy_config import compile_bootstrap
from outrider.process import ManagedProcess, free_port, http_ready, tcp_ready
from outrider.supervisor import envoy_argv

MODES = ("service", "local")
ROUTES = ("proxy", "native")
LIMIT = 1_000_000_000


def gateway_data(mode: str, listener: int, admin: int, origin: int, rls: int, metrics: int) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "gateway.yaml").read_text())
    for section in ("transformations", "cache", "validation"):
        data.pop(section, None)
    data["listeners"][0]["port"] = listener
    data["admin"]["port"] = admin
    data["services"] = {"ratelimit": {"port": rls, "metrics_port": metrics, "timeout_ms": 100},
                        "ext_authz": {"port": free_port(), "metrics_port": free_port()},
                        "demo_upstream": {"enabled": False}, "xds": {"enabled": False}}
    data["upstreams"][0]["endpoints"] = [{"address": "127.0.0.1", "port": origin}]
    for provider in data["auth"]["providers"]:
        provider["jwks_file"] = str(ROOT / "examples" / provider["jwks_file"])
    data["logging"] = {"level": "warning", "decisions": False, "access_log": {"enabled": False}}
    data["rate_limits"] = {"enforcement": mode, "tiers": {"enterprise": [
        {"requests_per_unit": LIMIT, "unit": "minute"}]}, "unknown_tier": "enterprise"}
    data["routes"] = [
        {"name": "proxy", "match": {"prefix": "/proxy/"}, "upstream": "demo", "public": True},
        {"name": "native", "match": {"prefix": "/native/"}, "upstream": "demo", "resource": "profile",
         "enforcement": "native"},
    ]
    return data


class Gateway:
    """One mode's Envoy (and, in service mode, its ratelimit_service)."""

    def __init__(self, mode: str, workdir: Path) -> None:
        self.mode = mode
        listener, admin, origin, rls, metrics = (free_port() for _ in range(5))
        self.base = f"http://127.0.0.1:{listener}"
        config_path = workdir / f"{mode}.yaml"
        config_path.write_text(yaml.safe_dump(gateway_data(mode, listener, admin, origin, rls, metrics),
                                               sort_keys=False))
        bootstrap = compile_bootstrap(load_config(config_path))
        bootstrap["static_resources"]["listeners"].append(origin_listener(origin))
        bootstrap_path = workdir / f"{mode}-envoy.yaml"
        bootstrap_path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
        self.envoy = ManagedProcess(f"envoy-{mode}", envoy_argv(bootstrap_path),
                                    ready=http_ready(f"http://127.0.0.1:{admin}/ready"),
                                    log_path=workdir / f"{mode}-envoy.log", cwd=ROOT)
        self.rls = (ManagedProcess("ratelimit", service_argv("ratelimit", config_path),
                                   ready=tcp_ready("127.0.0.1", rls), log_path=workdir / "ratelimit.log", cwd=ROOT)
                    if mode == "service" else None)

    def start(self) -> Gateway:
        if self.rls is not None:
            self.rls.start().wait_ready(30)
        self.envoy.start().wait_ready(30)
        return self

    def pids(self) -> tuple[list[int], list[int]]:
        assert self.envoy.proc is not None
        rls = descendants(self.rls.proc.pid) if self.rls is not None and self.rls.proc is not None else []
        return descendants(self.envoy.proc.pid), rls

    def stop(self) -> None:
        self.envoy.stop()
        if self.rls is not None:
            self.rls.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="local-limits-bench-"))
    gateways = {mode: Gateway(mode, workdir) for mode in MODES}
    provider = yaml.safe_load((ROOT / "examples" / "gateway.yaml").read_text())["auth"]["providers"][0]
    token = mint_dev_token(ROOT / "examples" / "keys", provider["issuer"], provider["audiences"][0],
                           subject="bench", roles=["user"], tier="enterprise", ttl_s=3600)
    headers = {"authorization": f"Bearer {token}"}
    cases = [(mode, route) for route in ROUTES for mode in MODES]
    samples: dict[tuple[str, str], list[tuple[float, int, float, float]]] = {c: [] for c in cases}
    try:
        for gateway in gateways.values():
            gateway.start()
            for route in ROUTES:
                wait_ok(f"{gateway.base}/{route}/x", headers, None)
        pids = {mode: g.pids() for mode, g in gateways.items()}
        for _ in range(args.rounds):
            for mode, route in cases:
                envoy_pids, rls_pids = pids[mode]
                before = (tree_cpu(envoy_pids), tree_cpu(rls_pids))
                result = wrk(f"{gateways[mode].base}/{route}/x", headers, args.seconds, connections=32)
                after = (tree_cpu(envoy_pids), tree_cpu(rls_pids))
                n = max(result.requests, 1)
                samples[mode, route].append((result.rps, result.non_2xx + result.socket_errors,
                                             (after[0] - before[0]) / n * 1e6, (after[1] - before[1]) / n * 1e6))
                time.sleep(0.2)
    finally:
        for gateway in gateways.values():
            gateway.stop()
    median = {c: statistics.median(s[0] for s in samples[c]) for c in cases}
    rows = [[f"{route} ({mode})", f"{median[mode, route]:,.0f}",
             f"{median[mode, route] / median[mode, 'proxy']:.2f}", str(sum(s[1] for s in samples[mode, route])),
             f"{statistics.median(s[2] for s in samples[mode, route]):.0f}",
             f"{statistics.median(s[3] for s in samples[mode, route]):.0f}" if mode == "service" else "—"]
            for mode, route in cases]
    print(machine_summary())
    print_table(f"GET, enterprise tier limit, {args.rounds} rounds x {args.seconds:g} s, wrk 32 connections "
                "(median)",
                ["route (rate_limits.enforcement)", "req/s", "ratio to proxy", "non-2xx/errors",
                 "Envoy µs CPU/req", "ratelimit_service µs CPU/req"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
