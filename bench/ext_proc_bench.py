"""ext_proc benchmark: what a header-only transform adds per phase, cache hit vs upstream, CPU vs a floor.

Prints a table. All routes sit behind one Envoy with the same config; the "floor" is a pass-through
ext_proc (bench/trivial_ext_proc.py) that answers every message with an empty response, started on the
same port in turn with outrider's ext_proc, in interleaved rounds.
Run: .venv/bin/python bench/ext_proc_bench.py [--seconds 2] [--rate 1000] [--rounds 1]
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
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, h2load_fixed_rate, machine_summary, print_table
from outrider.config import load_config
from outrider.envoy_config import compile_bootstrap
from outrider.process import ManagedProcess, free_port, http_ready, tcp_ready
from outrider.supervisor import envoy_argv

NO_PROC = {"validation": {"enabled": False}, "transformations": {"enabled": False}, "cache": {"enabled": False}}


def bench_config(workdir: Path, proc_port: int, demo_port: int) -> tuple[Path, dict[str, Any]]:
    """Routes to an Envoy-served origin (so no Python upstream blurs the per-phase figures) and to the
    demo upstream (a real Python origin, for cache hit vs upstream)."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "gateway.yaml").read_text())
    listener = free_port()
    data["listeners"][0]["port"] = listener
    data["admin"]["port"] = free_port()
    data["services"] = {
        "ext_authz": {**data["services"]["ext_authz"], "port": free_port(), "metrics_port": free_port()},
        "ext_proc": {"port": proc_port, "metrics_port": free_port()},
        "demo_upstream": {"enabled": False},
    }
    for key in list(data):
        if key not in ("listeners", "admin", "services", "auth", "rbac", "logging"):
            data.pop(key)
    data["logging"] = {"level": "warning", "decisions": False}
    data["auth"]["providers"][0]["jwks_file"] = str(ROOT / "examples" / "keys" / "jwks.json")
    data["upstreams"] = [{"name": "loop", "endpoints": [{"address": "127.0.0.1", "port": listener}]},
                         {"name": "demo", "endpoints": [{"address": "127.0.0.1", "port": demo_port}]}]
    loop = {"upstream": "loop", "public": True, "rewrite": {"prefix": "/origin/"}}
    now_header = {"add_headers": {"X-Seen-At": "${now()}"}}  # only ext_proc can compute it
    data["routes"] = [
        {"name": "origin", "match": {"prefix": "/origin/"},
         "direct_response": {"status": 200, "body": '{"items":[1,2,3]}'}},
        {"name": "plain", "match": {"prefix": "/bench/plain/"}, **loop, **NO_PROC},
        {"name": "req-header", "match": {"prefix": "/bench/req-header/"}, **loop,
         "transformations": {"request": now_header}},
        {"name": "both-headers", "match": {"prefix": "/bench/both-headers/"}, **loop,
         "transformations": {"request": now_header, "response": now_header}},
        {"name": "demo-plain", "match": {"prefix": "/bench/demo-plain/"}, "upstream": "demo", "public": True,
         **NO_PROC},
        {"name": "demo-cached", "match": {"prefix": "/bench/demo-cached/"}, "upstream": "demo", "public": True,
         "cache": {"rules": [{"path": "/bench/demo-cached/**", "ttl_s": 600}]}},
    ]
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, data


def request_headers_frame() -> bytes:
    """The request_headers message Envoy sends for an h2load GET, as one gRPC frame."""
    message = pb.ProcessingRequest()
    for key, value in {":authority": "127.0.0.1", ":path": "/bench/req-header/x", ":method": "GET",
                       ":scheme": "http", "user-agent": "h2load nghttp2/1.52.0", "x-forwarded-for": "127.0.0.1",
                       "x-forwarded-proto": "http", "x-envoy-external-address": "127.0.0.1",
                       "x-request-id": "4f1c8c2e-1f1e-4a3a-9a8e-1f1e4a3a9a8e"}.items():
        message.request_headers.headers.headers.append(base_pb2.HeaderValue(key=key, raw_value=value.encode()))
    message.request_headers.end_of_stream = True
    payload = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def grpc_direct(port: int, frame: Path, streams: int, pid: int) -> tuple[float, float]:
    """h2load straight at the processor (no Envoy): streams/s and CPU µs per one-message stream."""
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    subprocess.run(["h2load", "-n", str(streams), "-c", "4", "-m", "8", f"--data={frame}",
                    "-H", "content-type: application/grpc", "-H", "te: trailers",
                    "-H", "x-outrider-route: req-header",
                    f"http://127.0.0.1:{port}/envoy.service.ext_proc.v3.ExternalProcessor/Process"],
                   capture_output=True, check=True, timeout=120)
    elapsed = time.perf_counter() - t0
    return streams / elapsed, (cpu_seconds(pid) - cpu0) / streams * 1e6


def wait_ok(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} never answered 200")


def run(seconds: int, rate: int, rounds: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ext-proc-bench-"))
    proc_port, demo_port = free_port(), free_port()
    config_path, data = bench_config(workdir, proc_port, demo_port)
    bootstrap = workdir / "envoy.yaml"
    bootstrap.write_text(yaml.safe_dump(compile_bootstrap(load_config(config_path)), sort_keys=False))
    envoy = ManagedProcess("envoy", envoy_argv(bootstrap), log_path=workdir / "envoy.log",
                           ready=http_ready(f"http://127.0.0.1:{data['admin']['port']}/ready"))
    demo = ManagedProcess("demo", [sys.executable, "-m", "outrider.demo_upstream", "--port", str(demo_port)],
                          ready=tcp_ready("127.0.0.1", demo_port), log_path=workdir / "demo.log", cwd=ROOT)
    base = f"http://127.0.0.1:{data['listeners'][0]['port']}"
    servers = {
        "pass-through floor": [sys.executable, str(ROOT / "bench" / "trivial_ext_proc.py"), "--port", str(proc_port)],
        "outrider ext_proc": [sys.executable, "-m", "ext_proc", "--config", str(config_path)],
    }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    frame = workdir / "request_headers.bin"
    frame.write_bytes(request_headers_frame())
    baseline: list[float] = []
    demo.start().wait_ready(30)
    envoy.start().wait_ready(30)
    try:
        for _ in range(rounds):
            baseline.append(h2load_fixed_rate(f"{base}/bench/plain/x", {}, rate, seconds).p50_ms)
            for name, argv in servers.items():
                proc = ManagedProcess(name, argv, log_path=workdir / f"{name.replace(' ', '_')}.log", cwd=ROOT)
                proc.start()
                wait_ok(f"{base}/bench/req-header/x")
                assert proc.proc is not None
                pid = proc.proc.pid
                h2load_fixed_rate(f"{base}/bench/req-header/x", {}, rate, 1)  # warm up
                cpu0 = cpu_seconds(pid)
                one = h2load_fixed_rate(f"{base}/bench/req-header/x", {}, rate, seconds)
                cpu_stream = (cpu_seconds(pid) - cpu0) / max(one.requests, 1) * 1e6
                two = h2load_fixed_rate(f"{base}/bench/both-headers/x", {}, rate, seconds)
                direct_rps, direct_cpu = grpc_direct(proc_port, frame, 10_000, pid)
                sample = {"p50_1": one.p50_ms, "p99_1": one.p99_ms, "p50_2": two.p50_ms, "p99_2": two.p99_ms,
                          "cpu": cpu_stream, "non2xx": one.non_2xx + two.non_2xx, "direct_rps": direct_rps,
                          "direct_cpu": direct_cpu}
                if name.startswith("outrider"):
                    wait_ok(f"{base}/bench/demo-cached/x")  # stored: every request below is a hit
                    hit = h2load_fixed_rate(f"{base}/bench/demo-cached/x", {}, rate, seconds)
                    # The same route's upstream path: no-cache skips the lookup, the answer is stored again.
                    miss = h2load_fixed_rate(f"{base}/bench/demo-cached/x", {"cache-control": "no-cache"}, rate,
                                             seconds)
                    upstream = h2load_fixed_rate(f"{base}/bench/demo-plain/x", {}, rate, seconds)
                    sample.update({"hit_p50": hit.p50_ms, "hit_p99": hit.p99_ms, "up_p50": upstream.p50_ms,
                                   "up_p99": upstream.p99_ms, "miss_p50": miss.p50_ms, "miss_p99": miss.p99_ms,
                                   "non2xx": sample["non2xx"] + hit.non_2xx + miss.non_2xx})
                samples[name].append(sample)
                proc.stop()
    finally:
        envoy.stop()
        demo.stop()

    def med(name: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[name])

    floor, ours = "pass-through floor", "outrider ext_proc"
    plain = statistics.median(baseline)
    rows = [["no ext_proc (plain route)", f"{plain:.3f}", "—", "—", "—", "—", "—", "—", "—", "—"]]
    for name in servers:
        rows.append([
            name, f"{med(name, 'p50_1'):.3f}", f"{med(name, 'p50_1') - plain:+.3f}", f"{med(name, 'p50_2'):.3f}",
            f"{(med(name, 'p50_2') - plain) / 2:+.3f}", f"{med(name, 'p99_2'):.3f}",
            f"{med(name, 'cpu'):.0f} ({med(name, 'cpu') / med(floor, 'cpu'):.2f}×)",
            f"{med(name, 'direct_rps'):,.0f}",
            f"{med(name, 'direct_cpu'):.0f} ({med(name, 'direct_cpu') / med(floor, 'direct_cpu'):.2f}×)",
            f"{sum(s['non2xx'] for s in samples[name]):.0f}"])
    print(f"\nmachine: {machine_summary()}; date: {datetime.date.today()}; Envoy --concurrency 2, processor "
          f"and load generator on the same box. Load: h2load --h1 -c10 open loop at {rate} req/s for "
          f"{seconds}s per cell; CPU = utime+stime of the processor process (/proc/<pid>/stat) over the "
          f"1-phase run / requests; direct = h2load -c4 -m8 10k one-message streams straight at the "
          f"processor, no Envoy. Medians of {rounds} interleaved round(s).\n")
    print_table("header-only transform (X-Seen-At: ${now()}), upstream = Envoy direct response",
                ["processor", "p50 ms, 1 phase", "added p50, 1 phase", "p50 ms, 2 phases",
                 "added p50 per phase", "p99 ms, 2 phases", "CPU µs/stream (vs floor)", "direct streams/s",
                 "direct CPU µs/stream (vs floor)", "non-2xx"], rows)
    print()
    print_table("response cache (outrider ext_proc), upstream = demo upstream (aiohttp)",
                ["path", "p50 ms", "p99 ms"],
                [["cache HIT (immediate response from ext_proc)", f"{med(ours, 'hit_p50'):.3f}",
                  f"{med(ours, 'hit_p99'):.3f}"],
                 ["same route, upstream path (request no-cache: 3 messages + store)", f"{med(ours, 'miss_p50'):.3f}",
                  f"{med(ours, 'miss_p99'):.3f}"],
                 ["upstream, route without ext_proc", f"{med(ours, 'up_p50'):.3f}", f"{med(ours, 'up_p99'):.3f}"]])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    run(args.seconds, args.rate, args.rounds)


if __name__ == "__main__":
    main()
