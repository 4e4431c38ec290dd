"""What Envoy's access log costs: the full stack with `logging.access_log` on vs off, on a public route.

Two stacks from examples/gateway.yaml (Envoy + ext_authz + ratelimit + ext_proc + xds_server + demo
upstream), identical but for the access log (on: one JSON line per request to Envoy's stdout, a file here,
as under a container runtime). The per-IP limit is lifted so that every request goes the whole way. Only
one stack is loaded at a time; rounds interleave the two (on, off, off, on, ...) so drift hits both alike.
Per run: req/s at saturation (wrk, closed loop) and Envoy's CPU µs per request (/proc). Medians reported.

Run: .venv/bin/python bench/access_log_bench.py [--seconds 10] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, machine_summary, print_table, tool_version, wrk
from outrider.supervisor import envoy_binary
from tests.harness import Stack, example_config_dict, with_free_ports, write_config

# path → what it measures. The public route is the whole pipeline (auth check, rate limit check, ext_proc
# and the upstream, not cached); /health/live is answered by Envoy alone, where the log's own cost shows most.
PATHS = {"/api/v1/public/items/1": "public route, full pipeline", "/health/live": "Envoy alone (direct_response)"}
MAX_SECONDS = 10.0


def start(access_log: bool, workdir: Path) -> Stack:
    data = with_free_ports(example_config_dict())
    data["logging"]["decisions"] = False  # the services' decision lines are not what is measured
    data["logging"]["access_log"] = {"enabled": access_log}
    data["rate_limits"]["per_ip"] = {"requests_per_unit": 10_000_000, "unit": "second"}
    stack = Stack(write_config(data, workdir / "gateway.yaml"), data, workdir)
    try:
        return stack.start()
    except BaseException:
        stack.stop()
        raise


def run(stack: Stack, path: str, seconds: float, connections: int) -> tuple[float, float, int]:
    """(req/s, Envoy CPU µs per request, non-2xx responses) of one saturation run."""
    envoy = stack.procs["envoy"].proc
    assert envoy is not None
    before = cpu_seconds(envoy.pid)
    result = wrk(stack.url + path, {}, seconds, connections=connections)
    used = cpu_seconds(envoy.pid) - before
    return result.rps, used / max(result.requests, 1) * 1e6, result.non_2xx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    seconds = min(args.seconds, MAX_SECONDS)  # bounded: the machine is shared
    workdir = Path(tempfile.mkdtemp(prefix="access-log-bench-"))
    stacks: dict[bool, Stack] = {}
    samples: dict[tuple[str, bool], list[tuple[float, float, int]]] = {
        (p, on): [] for p in PATHS for on in (True, False)}
    try:
        for on in (True, False):
            (workdir / str(on)).mkdir()
            stacks[on] = start(on, workdir / str(on))
        for on in (True, False):  # warm-up: JWKS, first connections, Python imports on the hot path
            wrk(stacks[on].url + next(iter(PATHS)), {}, 1.0, connections=args.connections)
        for round_ in range(args.rounds):
            order = (True, False) if round_ % 2 == 0 else (False, True)
            for path in PATHS:
                for on in order:
                    sample = run(stacks[on], path, seconds, args.connections)
                    samples[(path, on)].append(sample)
                    print(f"round {round_ + 1} {path} access log {'on ' if on else 'off'}: {sample[0]:8.0f} req/s",
                          flush=True)
    finally:
        for stack in stacks.values():
            stack.stop()
    lines = sum(1 for line in (workdir / "True" / "envoy.log").read_text().splitlines() if line.startswith("{"))
    rows = []
    for path, what in PATHS.items():
        off_rps = statistics.median(s[0] for s in samples[(path, False)])
        for on in (True, False):
            runs = samples[(path, on)]
            rps = statistics.median(s[0] for s in runs)
            cpu = statistics.median(s[1] for s in runs)
            rows.append([f"GET {path} ({what})", "on" if on else "off", f"{rps:.0f}", f"{rps / off_rps:.3f}",
                         f"{cpu:.0f}", str(sum(s[2] for s in runs))])
    version = tool_version([envoy_binary(), "--version"], r"/(\d+\.\d+\.\d+)/")
    print_table(f"Access log cost, wrk -c {args.connections}, {seconds:g} s x {args.rounds} rounds "
                f"(medians; Envoy {version}; {machine_summary()})",
                ["request", "access log", "req/s", "ratio to off", "Envoy CPU µs/req", "non-2xx"], rows)
    print(f"\naccess log lines written by the 'on' stack: {lines}")


if __name__ == "__main__":
    main()
