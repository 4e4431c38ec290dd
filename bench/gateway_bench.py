"""`make bench`: the whole gateway against Envoy alone and against trivial gRPC servers (the floors).

One Envoy (the same build and settings `outrider run` uses) carries every scenario; its upstream is a
second listener of that Envoy answering with a fixed JSON document (direct_response), so no Python origin
caps the figures. For each variant of the three gRPC servers — trivial floors, outrider with 1 worker per
service, outrider with 2 — and each scenario: req/s at saturation (wrk), p50/p90/p99 at a fixed rate
(h2load open loop), CPU per request of each server process tree (/proc), peak RSS. Variants are
interleaved round by round and medians reported. Writes bench/RESULTS.md.

Run: .venv/bin/python bench/gateway_bench.py [--seconds 3] [--rate 1000] [--rounds 2] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine_summary, print_table, tool_version
from bench.gateway_load import Load, descendants, fixed_rate, saturate, tree_cpu, tree_rss
from bench.gateway_setup import (
    LIMIT_SCALE,
    ORIGIN_BODY,
    SCENARIOS,
    SERVICES,
    Ports,
    Scenario,
    free_ports,
    server_processes,
    write_bootstrap,
    write_configs,
)
from outrider.devtoken import mint_dev_token
from outrider.process import ManagedProcess, free_port, http_ready, tcp_ready
from outrider.supervisor import envoy_argv, envoy_binary

VARIANTS = ("floor", "w1", "w2")
VARIANT_LABEL = {"floor": "trivial floors", "w1": "outrider, 1 worker", "w2": "outrider, 2 workers"}
Sample = dict[str, float]


def workers_of(variant: str) -> int:
    """'w2' → 2; the floors are single processes."""
    return int(variant[1:]) if variant.startswith("w") else 1


def wait_ok(url: str, headers: dict[str, str], body: str | None, timeout_s: float = 30.0) -> None:
    """Poll until the gateway answers 200 twice in a row (the second GET of a cacheable path is a hit)."""
    deadline, good = time.monotonic() + timeout_s, 0
    data = body.encode() if body is not None else None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=2) as r:
                good = good + 1 if r.status == 200 else 0
        except (urllib.error.URLError, OSError):
            good = 0
        if good >= 2:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} never answered 200")


class Bench:
    """Owns Envoy, Redis and the per-variant servers, and the samples taken through them."""

    def __init__(self, workdir: Path, seconds: int, rate: int) -> None:
        self.workdir, self.seconds, self.rate = workdir, seconds, rate
        self.ports: Ports = free_ports()
        self.configs = write_configs(workdir, self.ports)
        # One Envoy per worker count, idle while the other is measured: Envoy's settings for a gRPC
        # cluster follow the service's `workers` (see outrider.envoy_contribution.grpc_service_cluster).
        self.envoys = {
            workers: ManagedProcess(f"envoy-w{workers}",
                                    envoy_argv(write_bootstrap(workdir, self.configs[workers], self.ports, workers)),
                                    log_path=workdir / f"envoy-w{workers}.log",
                                    ready=http_ready(f"http://127.0.0.1:{self.ports.admin[workers]}/ready"))
            for workers in (1, 2)}
        self.redis = ManagedProcess(
            "redis", ["redis-server", "--port", str(self.ports.redis), "--bind", "127.0.0.1", "--save", "",
                      "--appendonly", "no", "--dir", str(workdir)],
            ready=tcp_ready("127.0.0.1", self.ports.redis), log_path=workdir / "redis.log")
        self.token = mint_dev_token(ROOT / "examples" / "keys", "https://auth.outrider.dev", "outrider",
                                    subject="bench-user", roles=["user"], tier="free", ttl_s=3600)
        self.tokens: dict[str, str] = {"free": self.token}
        self.samples: dict[tuple[str, str], list[Sample]] = {}
        self.memory: dict[str, list[Sample]] = {}

    def token_of(self, tier: str) -> str:
        if tier not in self.tokens:
            self.tokens[tier] = mint_dev_token(ROOT / "examples" / "keys", "https://auth.outrider.dev", "outrider",
                                               subject="bench-user", roles=["user"], tier=tier, ttl_s=3600)
        return self.tokens[tier]

    def headers(self, scenario: Scenario) -> dict[str, str]:
        auth = {"authorization": f"Bearer {self.token_of(scenario.tier)}"} if scenario.auth else {}
        return {**scenario.headers, **auth}

    def base(self, variant: str) -> str:
        return f"http://127.0.0.1:{self.ports.listener[workers_of(variant)]}"

    def envoy_pid(self, variant: str) -> int:
        proc = self.envoys[workers_of(variant)].proc
        assert proc is not None
        return proc.pid

    def measure(self, scenario: Scenario, variant: str, pids: dict[str, list[int]]) -> None:
        url, headers = self.base(variant) + scenario.path, self.headers(scenario)
        every = {**pids, "envoy": [self.envoy_pid(variant)], "redis": [self.redis.proc.pid]}  # type: ignore[union-attr]
        sample: Sample = {}

        def run(label: str, load: Load, cpu0: dict[str, float]) -> None:
            for name, tree in every.items():
                sample[f"cpu_{label}_{name}"] = (tree_cpu(tree) - cpu0[name]) / max(load.requests, 1) * 1e6

        cpu0 = {name: tree_cpu(tree) for name, tree in every.items()}
        sat = saturate(url, headers, scenario.body, self.seconds, self.workdir)
        run("sat", sat, cpu0)
        cpu0 = {name: tree_cpu(tree) for name, tree in every.items()}
        fixed = fixed_rate(url, headers, scenario.body, self.rate, self.seconds, self.workdir)
        run("fixed", fixed, cpu0)
        sample.update({"rps": sat.rps, "p50": fixed.p50_ms, "p90": fixed.p90_ms, "p99": fixed.p99_ms,
                       "fixed_rps": fixed.rps, "non2xx": sat.non_2xx + fixed.non_2xx})
        self.samples.setdefault((scenario.name, variant if scenario.services else "-"), []).append(sample)
        print(f"  {variant:5} {scenario.name[:60]:60} {sat.rps:8,.0f} req/s  p99@{self.rate} {fixed.p99_ms:7.2f} ms"
              f"  non-2xx {sample['non2xx']:.0f}", file=sys.stderr, flush=True)

    def variant_round(self, variant: str, with_envoy_only: bool) -> None:
        procs = server_processes(variant, self.configs, self.ports, self.workdir)
        try:
            for proc in procs.values():
                proc.start()
            for proc in procs.values():
                proc.wait_ready(60)
            scenarios = [s for s in SCENARIOS if s.services or with_envoy_only]
            for scenario in scenarios:
                wait_ok(self.base(variant) + scenario.path, self.headers(scenario), scenario.body)
            # Warm up: Envoy's connections to every worker, token cache, cache entry, Redis scripts.
            for scenario in scenarios:
                if scenario.services:
                    saturate(self.base(variant) + scenario.path, self.headers(scenario), scenario.body, 1,
                             self.workdir)
            pids = {name: descendants(proc.proc.pid) for name, proc in procs.items()}  # type: ignore[union-attr]
            for scenario in scenarios:
                self.measure(scenario, variant, pids)
            self.memory.setdefault(variant, []).append({
                **{name: tree_rss(tree) for name, tree in pids.items()},
                "envoy": tree_rss([self.envoy_pid(variant)]), "redis": tree_rss([self.redis.proc.pid])})  # type: ignore[union-attr]
        finally:
            for proc in procs.values():
                proc.stop()

    def demo_upstream_cost(self) -> tuple[float, float]:
        """The aiohttp demo upstream by itself: saturation req/s and its own CPU µs per request."""
        port = free_port()
        demo = ManagedProcess("demo", [sys.executable, "-m", "outrider.demo_upstream", "--port", str(port)],
                              ready=tcp_ready("127.0.0.1", port), log_path=self.workdir / "demo.log", cwd=ROOT)
        demo.start().wait_ready(30)
        try:
            url = f"http://127.0.0.1:{port}/api/v1/users/profile"
            wait_ok(url, {}, None)
            assert demo.proc is not None
            cpu0 = tree_cpu([demo.proc.pid])
            load = saturate(url, {}, None, self.seconds, self.workdir)
            return load.rps, (tree_cpu([demo.proc.pid]) - cpu0) / max(load.requests, 1) * 1e6
        finally:
            demo.stop()


def med(samples: list[Sample], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def ratio(value: float, floor: float | None) -> str:
    return f" ({value / floor:.2f}×)" if floor else ""


def tables(bench: Bench, variants: Sequence[str], demo: tuple[float, float] | None) -> list[str]:
    out = []
    rate = bench.rate
    rows, cpu_rows, sat_rows = [], [], []
    proxied = bench.samples.get(("Envoy → origin (no filters)", "-"))
    proxy_rps = med(proxied, "rps") if proxied else None
    for scenario in SCENARIOS:
        for variant in variants if scenario.services else ["-"]:
            samples = bench.samples.get((scenario.name, variant))
            if not samples:
                continue
            floor = bench.samples.get((scenario.name, "floor")) if variant not in ("floor", "-") else None
            label = VARIANT_LABEL[variant] if scenario.services else "—"
            rps = med(samples, "rps")
            rows.append([scenario.name, label, f"{rps:,.0f}{ratio(rps, med(floor, 'rps') if floor else None)}",
                         f"{rps / proxy_rps:.3f}" if proxy_rps else "—",
                         f"{med(samples, 'p50'):.2f}", f"{med(samples, 'p90'):.2f}", f"{med(samples, 'p99'):.2f}",
                         f"{sum(s['non2xx'] for s in samples):.0f}"])
            cpu_cells = []
            for name in (*SERVICES, "envoy", "redis"):
                key = f"cpu_fixed_{name}"
                if name in SERVICES and name not in scenario.services:
                    cpu_cells.append("—")
                    continue
                value = med(samples, key)
                base = med(floor, key) if floor and name in SERVICES else None
                cpu_cells.append(f"{value:.0f}{ratio(value, base)}")
            cpu_rows.append([scenario.name, label, *cpu_cells])
            sat_cells = [med(samples, f"cpu_sat_{name}") for name in (*SERVICES, "envoy", "redis")]
            sat_rows.append([scenario.name, label, f"{rps:,.0f}", *[f"{c:.0f}" for c in sat_cells],
                             f"{sum(sat_cells):.0f}"])
    out.append(print_table(
        "Throughput and latency",
        ["scenario", "gRPC servers", "req/s at saturation (× floor)", "× Envoy → origin", f"p50 ms @{rate}/s",
         f"p90 ms @{rate}/s",
         f"p99 ms @{rate}/s", "non-2xx"], rows))
    out.append(print_table(
        f"CPU µs per request at {rate} req/s, per process tree (× the trivial floor's)",
        ["scenario", "gRPC servers", "ext_authz", "ratelimit", "ext_proc", "Envoy", "Redis"], cpu_rows))
    out.append(print_table(
        "CPU µs per request at saturation (where the 2 cores go; the load generator is the rest)",
        ["scenario", "gRPC servers", "req/s", "ext_authz", "ratelimit", "ext_proc", "Envoy", "Redis",
         "sum"], sat_rows))
    mem_rows = []
    for variant in variants:
        if bench.memory.get(variant):
            samples = bench.memory[variant]
            mem_rows.append([VARIANT_LABEL[variant],
                             *[f"{max(s[name] for s in samples):.0f}" for name in (*SERVICES, "envoy", "redis")]])
    out.append(print_table("Peak memory (VmHWM, MiB; a service's processes summed: parent + workers)",
                           ["gRPC servers", "ext_authz", "ratelimit", "ext_proc", "Envoy", "Redis"], mem_rows))
    full = next(s.name for s in SCENARIOS if s.name.startswith("full pipeline"))
    costs = {v: sum(med(bench.samples[(full, v)], f"cpu_sat_{name}") for name in (*SERVICES, "envoy", "redis"))
             for v in variants if (full, v) in bench.samples}
    if costs:
        cores = os.cpu_count() or 1
        out.append("**Ceiling of the full pipeline.** At saturation a request of the full pipeline costs, in CPU "
                   "summed over the gRPC servers, Envoy and Redis (the load generator not counted): " + "; ".join(
                       f"{VARIANT_LABEL[v]} {c:,.0f} µs → at most {cores * 1e6 / c:,.0f} req/s on {cores} cores"
                       for v, c in costs.items()) + ". The floors' line is what Envoy plus gRPC in Python cost "
                   "before any outrider logic runs: 2 unary calls and a 3-message ext_proc stream per request.")
    origin = bench.samples.get(("Envoy → origin (no filters)", "-"))
    direct = bench.samples.get(("Envoy alone, direct_response", "-"))
    if demo is not None and origin and direct:
        envoy_origin = med(origin, "cpu_sat_envoy") - med(direct, "cpu_sat_envoy")
        out.append(f"**Upstream.** The demo upstream (aiohttp, `outrider.demo_upstream`) by itself answers "
                   f"{demo[0]:,.0f} req/s at saturation with {demo[1]:.0f} µs of CPU per request: far above what "
                   "any scenario with a gRPC service reaches, so it would not cap them. The bench proxies to the "
                   "Envoy origin all the same: a fixed JSON answer, no further Python process on the shared "
                   f"cores, and Envoy-only rows that measure Envoy alone (proxying to the origin adds "
                   f"{envoy_origin:.0f} µs per request to Envoy, both listeners counted).")
    return out


def header(seconds: int, rate: int, rounds: int, variants: Sequence[str]) -> str:
    envoy = tool_version([envoy_binary(), "--version"], r"/(\d+\.\d+\.\d+)/")
    redis = tool_version(["redis-server", "--version"], r"v=(\S+)")
    wrk = tool_version(["wrk", "-v"], r"wrk (\S+)")
    h2load = tool_version(["h2load", "--version"], r"nghttp2/(\S+)")
    versions = (f"Envoy {envoy}, Python {platform.python_version()}, grpcio {metadata.version('grpcio')}, "
                f"protobuf {metadata.version('protobuf')}, uvloop {metadata.version('uvloop')}, "
                f"redis-server {redis}, wrk {wrk}, h2load {h2load}")
    return f"""# outrider benchmark results

Generated by `make bench` (`bench/gateway_bench.py`); numbers below are from the last run.

- **Machine:** {machine_summary()}; Linux {platform.release()}. Envoy, Redis, the Python services and the
  load generator all share these cores.
- **Date:** {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}
- **Versions:** {versions}
- **Envoy:** `--concurrency 2` as `outrider run` starts it, compiled from `examples/gateway.yaml` by
  `outrider.envoy_config` (static bootstrap; xDS only changes how the same resources arrive). Its upstream
  is a second listener of the same Envoy answering a JSON document of {len(ORIGIN_BODY)} bytes by
  `direct_response` (the cheapest origin there is). One Envoy per worker count (the gRPC clusters' HTTP/2
  settings follow `workers`); the one not being measured is idle.
- **Config:** the example's policies as they are (JWT RS256 + RBAC, rate limit tiers and endpoint limits on
  Redis, header/query/JSON transforms, validation, cache rules, decision logs on), except: limits × {LIMIT_SCALE:,}
  so nothing is refused, ports, and isolating routes (`/bench/…`) that switch on one service at a time.
- **Load:** saturation = `wrk -t1 -c32 -d{seconds}s` (closed loop); latency = `h2load --h1 -t1 -c10
  --rps={rate // 10} -D {seconds}` (open loop, {rate} req/s in total, so queueing shows in the percentiles),
  percentiles from its per-request log. CPU = utime+stime from `/proc/<pid>/stat` of each process tree
  (a service's parent and its workers) over the run, divided by the requests completed.
- **Floors:** `bench/trivial_authz.py` (always allow), `bench/ratelimit_bench.py --trivial-server` (always
  OK), `bench/trivial_ext_proc.py` (empty answer to every message), on the same grpc.aio + uvloop bootstrap,
  on the same ports, through the same Envoy. "(× …)" is the ratio to the floor in the same run.
- **Variants:** {', '.join(VARIANT_LABEL[v] for v in variants)}; `services.<svc>.workers` = 1 or 2 for all
  three services (SO_REUSEPORT). Medians of {rounds} round(s), variants interleaved within each round.
  The machine was shared with other work while measuring: treat the figures as noisy.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=3, help="length of each load run")
    parser.add_argument("--rate", type=int, default=1000, help="fixed rate for the latency run, req/s")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"), help="results file ('' = none)")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    bench = Bench(workdir, args.seconds, args.rate)
    demo = None
    bench.redis.start().wait_ready(20)
    try:
        for envoy in bench.envoys.values():
            envoy.start().wait_ready(30)
        demo = bench.demo_upstream_cost()
        for index in range(args.rounds):
            order = variants[index % len(variants):] + variants[:index % len(variants)]
            print(f"round {index + 1}/{args.rounds}: {', '.join(order)}", file=sys.stderr, flush=True)
            for variant in order:
                bench.variant_round(variant, with_envoy_only=variant == order[0])
    finally:
        for envoy in bench.envoys.values():
            envoy.stop()
        bench.redis.stop()
    text = header(args.seconds, args.rate, args.rounds, variants) + "\n" + "\n\n".join(
        tables(bench, variants, demo)) + "\n"
    print(f"\n(total {time.monotonic() - started:.0f} s; logs in {workdir})", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
