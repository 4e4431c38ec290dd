"""Native enforcement against ext_authz: req/s of one protected GET, each as a ratio to Envoy proxying.

One Envoy (the gateway's own bootstrap, `outrider envoy-bootstrap`) carries three routes to one origin, a
second listener of the same Envoy answering with a fixed JSON document (as bench/gateway_bench.py):
  proxy   public route: no check at all (the baseline)
  python  protected, ext_authz over gRPC (RS256 token, cached after the first request), RBAC in Python
  native  the same route with `enforcement: native`: jwt_authn (RS256, jwt_authn's own cache) + rbac + Lua
No rate limits, no ext_proc: this measures the authorization hop alone. Rounds are interleaved and the
median reported, with the CPU per request of Envoy and of ext_authz (/proc).

Run: .venv/bin/python bench/native_bench.py [--seconds 3] [--rounds 3]
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
from bench.gateway_setup import origin_listener
from outrider.config import load_config
from outrider.devtoken import mint_dev_token
from outrider.envoy_config import compile_bootstrap
from outrider.process import ManagedProcess, free_port, http_ready, tcp_ready
from outrider.supervisor import envoy_argv

MODES = ("proxy", "python", "native")


def gateway_data(listener: int, admin: int, origin: int, authz: int, metrics: int) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "gateway.yaml").read_text())
    for section in ("rate_limits", "transformations", "cache", "validation"):
        data.pop(section, None)
    data["listeners"][0]["port"] = listener
    data["admin"]["port"] = admin
    data["services"] = {"ext_authz": {"port": authz, "metrics_port": metrics},
                        "demo_upstream": {"enabled": False}, "xds": {"enabled": False}}
    data["upstreams"][0]["endpoints"] = [{"address": "127.0.0.1", "port": origin}]
    for provider in data["auth"]["providers"]:
        provider["jwks_file"] = str(ROOT / "examples" / provider["jwks_file"])
    data["logging"] = {"level": "warning", "decisions": False, "access_log": {"enabled": False}}
    data["routes"] = [
        {"name": "proxy", "match": {"prefix": "/proxy/"}, "upstream": "demo", "public": True},
        {"name": "python", "match": {"prefix": "/python/"}, "upstream": "demo", "resource": "profile"},
        {"name": "native", "match": {"prefix": "/native/"}, "upstream": "demo", "resource": "profile",
         "enforcement": "native"},
    ]
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="native-bench-"))
    listener, admin, origin, authz, metrics = (free_port() for _ in range(5))
    config_path = workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(gateway_data(listener, admin, origin, authz, metrics), sort_keys=False))
    bootstrap = compile_bootstrap(load_config(config_path))
    bootstrap["static_resources"]["listeners"].append(origin_listener(origin))
    bootstrap_path = workdir / "envoy.yaml"
    bootstrap_path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    authz_proc = ManagedProcess("ext_authz", [sys.executable, "-m", "ext_authz", "--config", str(config_path)],
                                ready=tcp_ready("127.0.0.1", authz), log_path=workdir / "ext_authz.log", cwd=ROOT)
    envoy = ManagedProcess("envoy", envoy_argv(bootstrap_path), ready=http_ready(f"http://127.0.0.1:{admin}/ready"),
                           log_path=workdir / "envoy.log", cwd=ROOT)
    provider = yaml.safe_load(config_path.read_text())["auth"]["providers"][0]
    token = mint_dev_token(ROOT / "examples" / "keys", provider["issuer"], provider["audiences"][0],
                           subject="bench", roles=["user"], tier="enterprise", ttl_s=3600)
    headers = {"authorization": f"Bearer {token}"}
    samples: dict[str, list[tuple[float, int, float, float]]] = {m: [] for m in MODES}
    try:
        authz_proc.start().wait_ready(30)
        envoy.start().wait_ready(30)
        base = f"http://127.0.0.1:{listener}"
        for mode in MODES:
            wait_ok(f"{base}/{mode}/x", headers, None)
        assert envoy.proc is not None and authz_proc.proc is not None
        envoy_pids, authz_pids = descendants(envoy.proc.pid), descendants(authz_proc.proc.pid)
        for _ in range(args.rounds):
            for mode in MODES:
                before = (tree_cpu(envoy_pids), tree_cpu(authz_pids))
                result = wrk(f"{base}/{mode}/x", headers, args.seconds, connections=32)
                after = (tree_cpu(envoy_pids), tree_cpu(authz_pids))
                n = max(result.requests, 1)
                samples[mode].append((result.rps, result.non_2xx + result.socket_errors,
                                      (after[0] - before[0]) / n * 1e6, (after[1] - before[1]) / n * 1e6))
                time.sleep(0.2)
    finally:
        envoy.stop()
        authz_proc.stop()
    median = {m: statistics.median(s[0] for s in samples[m]) for m in MODES}
    rows = [[mode, f"{median[mode]:,.0f}", f"{median[mode] / median['proxy']:.3f}",
             str(sum(s[1] for s in samples[mode])),
             f"{statistics.median(s[2] for s in samples[mode]):.0f}",
             f"{statistics.median(s[3] for s in samples[mode]):.0f}"]
            for mode in MODES]
    print(machine_summary())
    print_table(f"Protected GET, {args.rounds} rounds x {args.seconds:g} s, wrk 32 connections (median)",
                ["route", "req/s", "ratio to proxy", "non-2xx/errors", "Envoy µs CPU/req", "ext_authz µs CPU/req"],
                rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
