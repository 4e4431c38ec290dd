"""The transport: the three gRPC services as three processes against one process hosting all three.

Same Envoy, Redis, origin and config as `make bench` (bench/gateway_setup.py; the origin is a second
listener of the same Envoy answering itself); only how the services run differs: "three processes"
(`python -m ext_authz|ratelimit_service|ext_proc`, 1 worker each) or "one process"
(`python -m outrider.combined`: the same runtimes on one event loop, each on its own port). Scenarios:
the full pipeline (a protected GET through ext_authz, the rate limit and ext_proc) and a cache hit.
Per run: req/s at saturation (wrk), p99 at a fixed rate (h2load), CPU µs per request of each process
tree (/proc). Variants interleaved round by round; medians.

Run: .venv/bin/python bench/transport_bench.py [--seconds 5] [--rounds 3] [--rate 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine_summary, print_table
from bench.gateway_bench import Bench, Sample
from bench.gateway_setup import SCENARIOS, SERVICES, service_argv
from outrider.process import ManagedProcess, grpc_serving

VARIANTS = {"three": "three processes", "one": "one process (outrider.combined)"}
MEASURED = [s for s in SCENARIOS if set(s.services) == set(SERVICES) or s.name.startswith("cache hit")]


class TransportBench(Bench):
    def servers(self, variant: str) -> dict[str, ManagedProcess]:
        config = self.configs[1]
        ready_all = [grpc_serving("127.0.0.1", self.ports.service[name]) for name in SERVICES]
        if variant == "one":
            argv = [sys.executable, "-m", "outrider.combined", "--config", str(config)]
            return {"services": ManagedProcess("one", argv, ready=lambda: all(r() for r in ready_all),
                                               log_path=self.workdir / "one.log", cwd=ROOT)}
        return {name: ManagedProcess(f"three-{name}", service_argv(name, config),
                                     ready=grpc_serving("127.0.0.1", self.ports.service[name]),
                                     log_path=self.workdir / f"three-{name}.log", cwd=ROOT)
                for name in SERVICES}

    def round(self, variant: str) -> None:
        from bench.gateway_bench import wait_ok
        from bench.gateway_load import descendants, saturate

        procs = self.servers(variant)
        try:
            for proc in procs.values():
                proc.start()
            for proc in procs.values():
                proc.wait_ready(60)
            for scenario in MEASURED:
                wait_ok(self.base("w1") + scenario.path, self.headers(scenario), scenario.body)
                saturate(self.base("w1") + scenario.path, self.headers(scenario), scenario.body, 1, self.workdir)
            pids = {name: descendants(proc.proc.pid) for name, proc in procs.items()}  # type: ignore[union-attr]
            for scenario in MEASURED:
                before = len(self.samples.get((scenario.name, "w1"), []))
                self.measure(scenario, "w1", pids)
                # measure() files samples under the Envoy variant; move this one under ours.
                sample = self.samples[(scenario.name, "w1")].pop(before)
                self.samples.setdefault((scenario.name, variant), []).append(sample)
        finally:
            for proc in procs.values():
                proc.stop()


def med(samples: list[Sample], key: str) -> float:
    values = [s[key] for s in samples if key in s]
    return statistics.median(values) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=300, help="fixed rate for the latency run, req/s")
    args = parser.parse_args()
    bench = TransportBench(Path(tempfile.mkdtemp(prefix="transport-bench-")), args.seconds, ["w1"], args.rate)
    bench.redis.start().wait_ready(20)
    try:
        bench.envoys[1].start().wait_ready(30)
        for index in range(args.rounds):
            order = list(VARIANTS)[index % 2:] + list(VARIANTS)[:index % 2]
            print(f"round {index + 1}/{args.rounds}: {', '.join(order)}", file=sys.stderr, flush=True)
            for variant in order:
                bench.round(variant)
    finally:
        bench.envoys[1].stop()
        bench.redis.stop()
    print(machine_summary())
    rows = []
    for scenario in MEASURED:
        base = None
        for variant, label in VARIANTS.items():
            samples = bench.samples.get((scenario.name, variant), [])
            if not samples:
                continue
            rps = med(samples, "rps")
            base = base or rps
            services = [k.removeprefix("cpu_sat_") for k in samples[0] if k.startswith("cpu_sat_")
                        and k.removeprefix("cpu_sat_") not in ("envoy", "redis")]
            service_cpu = sum(med(samples, f"cpu_sat_{name}") for name in services)
            rows.append([scenario.name[:48], label, f"{rps:,.0f}", f"{rps / base:.2f}",
                         f"{med(samples, 'p99'):.2f}",
                         " + ".join(f"{med(samples, f'cpu_sat_{n}'):.0f}" for n in services) + f" = {service_cpu:.0f}",
                         f"{med(samples, 'cpu_sat_envoy'):.0f}", f"{med(samples, 'cpu_sat_redis'):.0f}",
                         f"{sum(s['non2xx'] for s in samples):.0f}"])
    print_table("Services as three processes or one",
                ["scenario", "services run as", "req/s", "× three", f"p99 ms @{args.rate}/s",
                 "services CPU µs/req", "Envoy µs/req", "Redis µs/req", "non-2xx"], rows)


if __name__ == "__main__":
    main()
