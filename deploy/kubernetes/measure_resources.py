"""RSS and CPU of every process of the gateway stack, idle and under load: the figures behind the manifests' resources.

    .venv/bin/python deploy/kubernetes/measure_resources.py [--seconds 15] [--concurrency 32]

Starts the example gateway as `make run` does (Envoy, control plane, ext_authz, ratelimit, ext_proc, demo
upstream) on free loopback ports, with the rate-limit counters and the response cache on a real
redis-server as in deploy/kubernetes/base/gateway.yaml. Samples each process idle for 5 s, then drives
bench/soak.py's mixed traffic (valid tokens of distinct users, hostile paths and bodies, public calls) for
--seconds and samples again: RSS at the end and the peak, CPU as cores (CPU seconds / wall seconds).
The load generator runs on the same machine, so CPU figures are what the stack got, not what it could use.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, machine_summary, print_table  # noqa: E402  (the repo root is put on sys.path first)
from bench.soak import Traffic, current_rss_mib, drive, processes  # noqa: E402  (the repo root is put on sys.path first)
from tests.harness import Stack, example_config_dict, with_free_ports, write_config  # noqa: E402  (the repo root is put on sys.path first)
from tests.redis_harness import redis_process, redis_url  # noqa: E402  (the repo root is put on sys.path first)


def sample(pids: dict[str, int], seconds: float, during: asyncio.Future[object] | None = None
           ) -> dict[str, tuple[float, float, float]]:
    """name → (CPU cores, RSS MiB at the end, peak RSS MiB) over `seconds`."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    peak = {name: current_rss_mib(pid) for name, pid in pids.items()}
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(0.5)
        for name, pid in pids.items():
            peak[name] = max(peak[name], current_rss_mib(pid))
    wall = time.monotonic() - started
    return {name: ((cpu_seconds(pid) - before[name]) / wall, current_rss_mib(pid), peak[name])
            for name, pid in pids.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="k8s-resources-"))
    redis = redis_process(workdir / "redis").start()
    redis.wait_ready(10)
    data = with_free_ports(example_config_dict())
    data["logging"] = {"level": "warning", "decisions": False}
    data["rate_limits"]["redis"] = {"url": redis_url(redis)}
    data["rate_limits"]["per_ip"] = {"requests_per_unit": 100_000, "unit": "second", "burst": 100_000}
    data["cache"].update(backend="redis", redis_url=redis_url(redis).rsplit("/", 1)[0] + "/1")
    stack = Stack(write_config(data, workdir / "gateway.yaml"), data, workdir)
    stack.start()
    try:
        pids = processes(stack)
        pids["redis"] = redis.proc.pid  # type: ignore[union-attr]
        idle = sample(pids, 5)
        traffic = Traffic(stack, users=10_000)
        statuses: dict[int, int] = {}

        async def load() -> dict[str, tuple[float, float, float]]:
            task = asyncio.create_task(drive(traffic, args.seconds, args.concurrency, statuses))
            figures = await asyncio.to_thread(sample, pids, args.seconds)
            await task
            return figures

        loaded = asyncio.run(load())
    finally:
        stack.stop()
        redis.stop()
    total = sum(statuses.values())
    print(f"{total} requests in {args.seconds:.0f} s ({total / args.seconds:.0f}/s), statuses "
          f"{dict(sorted(statuses.items()))}")
    rows = [[name, f"{idle[name][1]:.0f}", f"{idle[name][0] * 1000:.0f}m", f"{loaded[name][2]:.0f}",
             f"{loaded[name][0] * 1000:.0f}m"] for name in sorted(pids)]
    print_table(f"Gateway stack: RSS (MiB) and CPU (millicores) — {machine_summary()}",
                ["process", "idle RSS", "idle CPU", "peak RSS under load", "CPU under load"], rows)


if __name__ == "__main__":
    main()
