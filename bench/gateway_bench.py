"""`make bench`: the whole gateway against Envoy alone and against trivial gRPC servers (the floors).

One Envoy (the same build and settings `outrider run` uses) carries every scenario; its upstream is a
second listener of that Envoy answering with a fixed JSON document (direct_response), so no Python origin
caps the figures. For each variant of the three gRPC servers — trivial floors, outrider with 1 worker per
service (and with 2, `--variants floor,w1,w2`) — and each scenario: req/s at saturation (wrk); then an open
loop (h2load) at half that req/s for p50/p90/p99, and Envoy → origin at the same rate in the same round, whose
p99 the scenario's is compared with ("added p99"); CPU per request of each server process tree (/proc), peak
RSS. Variants are interleaved round by round and medians reported. Ends with before → after (CPU at
saturation, against `--before`, bench/RESULTS-before.md by default) and issue 15's targets, pass or fail.
Writes bench/RESULTS.md.

Run: .venv/bin/python bench/gateway_bench.py [--quick] [--seconds 3] [--rounds 2] [--variants floor,w1]
     [--before bench/RESULTS-before.md] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine_summary, tool_version
from bench.gateway_load import (
    CLIENTS,
    Load,
    descendants,
    fixed_rate,
    saturate,
    tree_cpu,
    tree_rss,
    warm_up,
)
from bench.gateway_report import CPU_SAT_TITLE, VARIANT_LABEL, Report, Sample
from bench.gateway_setup import (
    BASELINE,
    LIMIT_SCALE,
    ORIGIN_BODY,
    SCENARIOS,
    Ports,
    Scenario,
    active_settings,
    free_ports,
    server_processes,
    write_bootstrap,
    write_configs,
)
from bench.results_md import read_previous
from outrider.devtoken import mint_dev_token
from outrider.process import ManagedProcess, free_port, http_ready, tcp_ready
from outrider.supervisor import envoy_argv, envoy_binary

VARIANTS = ("floor", "w1", "w2")
# w2 on this 2-core box measures the cores more than outrider, and a third variant takes `make bench` past
# 6 minutes; `--variants floor,w1,w2` runs it.
DEFAULT_VARIANTS = ("floor", "w1")
# The open-loop run is at this fraction of the scenario's own req/s at saturation (issue 15: "at 50 % of the
# measured capacity"), so every scenario is compared at the same load relative to what it can carry.
LOAD_FRACTION = 0.5
BASELINE_PATH = next(s.path for s in SCENARIOS if s.name == BASELINE)
ENVOY_ALONE_PATH = SCENARIOS[0].path


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

    def __init__(self, workdir: Path, seconds: int, variants: Sequence[str], rate: float | None = None) -> None:
        # rate: the open loop at this fixed req/s instead of at LOAD_FRACTION of each scenario's saturation
        # (bench/transport_bench.py compares two ways of running the services at one rate).
        self.workdir, self.seconds, self.rate = workdir, seconds, rate
        self.ports: Ports = free_ports()
        self.configs = write_configs(workdir, self.ports)
        # One Envoy per worker count the variants use, idle while another is measured: Envoy's settings for
        # a gRPC cluster follow the service's `workers` (see outrider.envoy_contribution.grpc_service_cluster).
        self.envoys = {
            workers: ManagedProcess(f"envoy-w{workers}",
                                    envoy_argv(write_bootstrap(workdir, self.configs[workers], self.ports, workers)),
                                    log_path=workdir / f"envoy-w{workers}.log",
                                    ready=http_ready(f"http://127.0.0.1:{self.ports.admin[workers]}/ready"))
            for workers in sorted({workers_of(v) for v in variants})}
        self.redis = ManagedProcess(
            "redis", ["redis-server", "--port", str(self.ports.redis), "--bind", "127.0.0.1", "--save", "",
                      "--appendonly", "no", "--dir", str(workdir)],
            ready=tcp_ready("127.0.0.1", self.ports.redis), log_path=workdir / "redis.log")
        self.tokens: dict[str, str] = {}
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

    def measure(self, scenario: Scenario, variant: str, pids: dict[str, list[int]]) -> Sample:
        """Saturation, then the open loop at LOAD_FRACTION of it, then the baseline at that same rate."""
        url, headers = self.base(variant) + scenario.path, self.headers(scenario)
        every = {**pids, "envoy": [self.envoy_pid(variant)], "redis": [self.redis.proc.pid]}  # type: ignore[union-attr]
        sample: Sample = {}
        # Envoy alone at half its capacity (~10,000 req/s) times h2load more than Envoy: saturation only.
        latency = scenario.path != ENVOY_ALONE_PATH

        def counted(label: str, run: Callable[[], Load]) -> Load:
            """Run a load and record each process tree's CPU per request completed during it."""
            cpu0 = {name: tree_cpu(tree) for name, tree in every.items()}
            load = run()
            for name, tree in every.items():
                sample[f"cpu_{label}_{name}"] = (tree_cpu(tree) - cpu0[name]) / max(load.requests, 1) * 1e6
            return load

        sat = counted("sat", lambda: saturate(url, headers, scenario.body, self.seconds, self.workdir))
        rate, nan = self.rate or sat.rps * LOAD_FRACTION, float("nan")
        # h2load refuses --rps below 1 per client; nothing answered means nothing to time
        timed = latency and rate >= 1
        half = Load(0, nan, nan, nan, nan, 0)
        if timed:
            half = counted("half", lambda: fixed_rate(url, headers, scenario.body, rate, self.seconds,
                                                      self.workdir))
        sample.update({"rps": sat.rps, "half_rate": rate if timed else nan, "half_rps": half.rps,
                       "p50": half.p50_ms, "p90": half.p90_ms, "p99": half.p99_ms,
                       "non2xx": sat.non_2xx + half.non_2xx, "base_p99": nan, "added_p99": nan})
        if scenario.services and timed:
            # The same Envoy proxying to the same origin with no filter, at the same rate with the same clients,
            # right after: what the filters and services add to p99, with this round's load on the box.
            base = fixed_rate(self.base(variant) + BASELINE_PATH, {}, None, rate, self.seconds, self.workdir)
            sample["base_p99"], sample["added_p99"] = base.p99_ms, half.p99_ms - base.p99_ms
        self.samples.setdefault((scenario.name, variant if scenario.services else "-"), []).append(sample)
        print(f"  {variant:5} {scenario.name[:60]:60} {sat.rps:8,.0f} req/s  @{rate:6,.0f}/s p99 {half.p99_ms:7.2f}"
              f" ms (added {sample['added_p99']:6.2f})  non-2xx {sample['non2xx']:.0f}", file=sys.stderr, flush=True)
        return sample

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
                    warm_up(self.base(variant) + scenario.path, self.headers(scenario), scenario.body, self.workdir)
            pids = {name: descendants(proc.proc.pid) for name, proc in procs.items()}  # type: ignore[union-attr]
            taken, paired = [], math.nan
            for scenario in scenarios:
                if scenario.issue and math.isnan(paired):
                    # Issue 15's ratios are to Envoy → origin: measured again here, on this variant's Envoy, next
                    # to the issue's scenarios, so that load from outside the bench moves both sides of the ratio.
                    paired = saturate(self.base(variant) + BASELINE_PATH, {}, None, self.seconds, self.workdir).rps
                    print(f"  {variant:5} {BASELINE + ', paired':60} {paired:8,.0f} req/s", file=sys.stderr, flush=True)
                taken.append(self.measure(scenario, variant, pids))
            for sample in taken:
                sample["pair_rps"] = paired
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



def header(seconds: int, rounds: int, variants: Sequence[str], load_before: float) -> str:
    envoy = tool_version([envoy_binary(), "--version"], r"/(\d+\.\d+\.\d+)/")
    redis = tool_version(["redis-server", "--version"], r"v=(\S+)")
    wrk = tool_version(["wrk", "-v"], r"wrk (\S+)")
    h2load = tool_version(["h2load", "--version"], r"nghttp2/(\S+)")
    settings = ", ".join(f"`{path}: {value}`" for path, value in active_settings().items()) or "none"
    versions = (f"Envoy {envoy}, Python {platform.python_version()}, grpcio {metadata.version('grpcio')}, "
                f"protobuf {metadata.version('protobuf')}, uvloop {metadata.version('uvloop')}, "
                f"redis-server {redis}, wrk {wrk}, h2load {h2load}")
    return f"""# outrider benchmark results

Generated by `make bench` (`bench/gateway_bench.py`); numbers below are from the last run.

- **Machine:** {machine_summary()}; Linux {platform.release()}. Envoy, Redis, the Python services and the
  load generator all share these cores.
- **Date:** {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; load average (1 min) {load_before:.1f} before the
  run, {os.getloadavg()[0]:.1f} at its end (2 cores: above ~2, work outside the bench was competing).
- **Versions:** {versions}
- **Envoy:** `--concurrency 2` as `outrider run` starts it, compiled from `examples/gateway.yaml` by
  `outrider.envoy_config` (static bootstrap; xDS only changes how the same resources arrive). Its upstream
  is a second listener of the same Envoy answering a JSON document of {len(ORIGIN_BODY)} bytes by
  `direct_response` (the cheapest origin there is). One Envoy per worker count measured (the gRPC clusters'
  HTTP/2 settings follow `workers`); one not being measured is idle.
- **Config:** the example's policies as they are (JWT RS256 + RBAC, rate limit tiers and endpoint limits on
  Redis, header/query/JSON transforms, validation, cache rules, decision logs on), except: limits × {LIMIT_SCALE:,}
  so nothing is refused, ports, and isolating routes (`/bench/…`) that switch on one service at a time
  (`OVERRIDES` in `bench/gateway_setup.py`). Settings overrides in effect: {settings}.
- **Load:** saturation = `wrk -t1 -c32 -d{seconds}s` (closed loop). Latency = `h2load --h1 -t1 -D {seconds}`
  open loop at {LOAD_FRACTION:.0%} of the scenario's own req/s at saturation (issue 15's "50 % of capacity"),
  `-c{CLIENTS}` at every rate (h2load's clients fire in step: more would measure bursts, see
  `bench/gateway_load.py`); percentiles from h2load's per-request log. Right after, in the same
  round, Envoy → origin (no filters) at that same rate: "added p99" = the scenario's p99 − that p99 (Envoy
  alone is not timed: at half its capacity the single h2load thread is the bottleneck). "× Envoy → origin" is to
  Envoy → origin's saturation req/s measured again in each variant round, just before issue 15's scenarios.
  CPU = utime+stime from `/proc/<pid>/stat` of each process tree (a service's parent and its workers) over
  the run, divided by the requests completed.
- **Floors:** `bench/trivial_authz.py` (always allow), `bench/ratelimit_bench.py --trivial-server` (always
  OK), `bench/trivial_ext_proc.py` (empty answer to every message), on the same grpc.aio + uvloop bootstrap,
  on the same ports, through the same Envoy. "(× …)" is the ratio to the floor in the same run.
- **Variants:** {', '.join(VARIANT_LABEL[v] for v in variants)}; `services.<svc>.workers` = 1 or 2 for all
  three services (SO_REUSEPORT). Medians of {rounds} round(s), variants interleaved within each round.
  The machine was shared with other work while measuring: treat the figures as noisy.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, help="length of each load run (default 3; 2 with --quick)")
    parser.add_argument("--rounds", type=int, help="rounds, medians reported (default 2; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s runs")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"of {','.join(VARIANTS)}")
    before = ROOT / "bench" / "RESULTS-before.md"
    parser.add_argument("--before", default=str(before) if before.exists() else "",
                        help=f"an earlier results file: its '{CPU_SAT_TITLE}' table is the before ('' = none)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"), help="results file ('' = none)")
    args = parser.parse_args()
    seconds = args.seconds or (2 if args.quick else 3)
    rounds = args.rounds or (1 if args.quick else 2)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    previous = read_previous(Path(args.before), CPU_SAT_TITLE) if args.before else None
    started, load_before = time.monotonic(), os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    bench = Bench(workdir, seconds, variants)
    demo = None
    bench.redis.start().wait_ready(20)
    try:
        for envoy in bench.envoys.values():
            envoy.start().wait_ready(30)
        demo = bench.demo_upstream_cost()
        for index in range(rounds):
            order = variants[index % len(variants):] + variants[:index % len(variants)]
            print(f"round {index + 1}/{rounds}: {', '.join(order)}", file=sys.stderr, flush=True)
            for variant in order:
                bench.variant_round(variant, with_envoy_only=variant == order[0])
    finally:
        for envoy in bench.envoys.values():
            envoy.stop()
        bench.redis.stop()
    report = Report(bench.samples, bench.memory, variants)
    text = header(seconds, rounds, variants, load_before) + "\n" + "\n\n".join(report.all(demo, previous)) + "\n"
    print(f"\n(total {time.monotonic() - started:.0f} s; logs in {workdir})", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
