"""Benchmark ratelimit_service: decisions/s, CPU per decision vs a trivial always-OK RLS, p99 at 1,000 req/s.

Load: h2load sends gRPC unary ShouldRateLimit calls directly (a framed serialized request as the body).
CPU: utime+stime of the server process from /proc/<pid>/stat, before and after each run.
Each server runs as its own process on one core's worth of event loop (grpc.aio + uvloop), like in the stack.

    .venv/bin/python bench/ratelimit_bench.py [--seconds 4] [--concurrency 8] [--streams 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from outrider.process import ManagedProcess, free_port, http_ready, tcp_ready

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
TICKS = os.sysconf("SC_CLK_TCK")


def three_descriptors() -> rls_pb2.RateLimitRequest:
    """What Envoy sends for a protected route of the example: client address, tier + user, endpoint."""
    request = rls_pb2.RateLimitRequest(domain="outrider")
    for entries in ((("remote_address", "10.1.2.3"),),
                    (("tier", "premium"), ("user_id", "alice")),
                    (("endpoint", "/api/v1/search"),)):
        descriptor = request.descriptors.add()
        for key, value in entries:
            descriptor.entries.add(key=key, value=value)
    return request


def framed(message: rls_pb2.RateLimitRequest) -> bytes:
    body = message.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


async def _trivial_server(port: int) -> None:
    """Always OK, one status per descriptor: the floor that gRPC in Python costs."""
    ok = rls_pb2.RateLimitResponse.OK

    class Trivial(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
        async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest,
                                  context: grpc.aio.ServicerContext) -> rls_pb2.RateLimitResponse:
            response = rls_pb2.RateLimitResponse(overall_code=ok)
            for _ in request.descriptors:
                response.statuses.add(code=ok)
            return response

    from outrider.grpc_runtime import serve

    # The same runtime as the real service (options, health service, GC settings): only the logic differs.
    await serve(lambda server: rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Trivial(), server),
                "127.0.0.1", port, ["envoy.service.ratelimit.v3.RateLimitService"])


def gateway_config(workdir: Path, redis: str | None) -> tuple[Path, int, int]:
    data = yaml.safe_load((ROOT / "examples" / "gateway.yaml").read_text())
    port, metrics = free_port(), free_port()
    data["services"]["ratelimit"] = {"port": port, "metrics_port": metrics, "timeout_ms": 100}
    for provider in data["auth"]["providers"]:
        provider["jwks_file"] = str(ROOT / "examples" / provider["jwks_file"])
    rl = data["rate_limits"]
    # Limits high enough that the run measures admitted decisions (every counter is still charged).
    rl["per_ip"] = {"requests_per_unit": 1_000_000_000, "unit": "second", "burst": 1_000_000_000}
    rl["endpoints"] = [{"path": "/api/v1/search", "limit": {"requests_per_unit": 1_000_000_000, "unit": "second"}}]
    rl["tiers"]["premium"] = [{"requests_per_unit": 1_000_000_000, "unit": "minute"},
                              {"requests_per_unit": 1_000_000_000, "unit": "hour"}]
    data["logging"] = {"level": "warning", "decisions": False}
    if redis is not None:
        rl["redis"] = {"url": redis}
    path = workdir / f"gateway-{'redis' if redis else 'memory'}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, port, metrics


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def h2load(port: int, data: Path, args: list[str], log: Path | None = None) -> str:
    argv = ["h2load", *args, f"--data={data}", "-H", "content-type: application/grpc", "-H", "te: trailers"]
    if log is not None:
        argv.append(f"--log-file={log}")
    argv.append(f"http://127.0.0.1:{port}{METHOD}")
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


def throughput(port: int, pid: int, data: Path, seconds: float, clients: int, streams: int) -> tuple[float, float]:
    """(decisions/s, CPU µs per decision) over a run of about `seconds`."""
    cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
    out = h2load(port, data, ["-D", str(int(seconds)), "-c", str(clients), "-m", str(streams), "-t", "1"])
    cpu1, wall1 = cpu_seconds(pid), time.perf_counter()
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out).group(2))  # type: ignore[union-attr]
    return done / (wall1 - wall0), (cpu1 - cpu0) / done * 1e6


def p99_at(port: int, data: Path, rate: int, seconds: int, workdir: Path) -> tuple[float, float, int]:
    """p50 and p99 latency (ms) at a fixed total rate: 10 clients, each `rate/10` req/s, one stream."""
    log = workdir / f"h2load-{port}.log"
    clients = 10
    h2load(port, data, ["-n", str(rate * seconds), "-c", str(clients), "-m", "1", "-t", "1",
                        "--rps", str(rate // clients)], log)
    latencies = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.strip())
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000  # noqa: E731
    return pick(0.50), pick(0.99), len(latencies)


def decision_buckets(metrics_port: int | None) -> dict[float, float]:
    """rate_limit_decision_seconds buckets (cumulative counts by upper bound) from the service's /metrics."""
    if metrics_port is None:
        return {}
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for match in re.finditer(r'rate_limit_decision_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)', text):
        out[float(match.group(1))] = float(match.group(2))
    return out


def inside_p99_ms(before: dict[float, float], after: dict[float, float]) -> str:
    """The bucket bound under which 99% of the run's decisions took their time inside the service."""
    if not after:
        return "-"
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    total = delta[float("inf")]
    for le in sorted(delta):
        if delta[le] >= 0.99 * total:
            return f"<= {le * 1000:g}" if le != float("inf") else "> 100"
    return "-"


def check_answer(port: int) -> str:
    async def ask() -> rls_pb2.RateLimitResponse:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(three_descriptors(), timeout=5)

    response = asyncio.run(ask())
    return ", ".join(f"{s.limit_remaining}" for s in response.statuses)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--trivial-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trivial_server:
        import uvloop

        uvloop.run(_trivial_server(args.trivial_server))
        return
    for tool in ("h2load", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (make system-deps installs it)")
    workdir = Path(tempfile.mkdtemp(prefix="rl-bench-"))
    data = workdir / "request.bin"
    data.write_bytes(framed(three_descriptors()))
    redis_port = free_port()
    redis = ManagedProcess("redis", ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no",
                                     "--dir", str(workdir)], ready=tcp_ready("127.0.0.1", redis_port),
                           log_path=workdir / "redis.log")
    trivial_port = free_port()
    trivial = ManagedProcess("trivial", [sys.executable, __file__, "--trivial-server", str(trivial_port)],
                             ready=tcp_ready("127.0.0.1", trivial_port), log_path=workdir / "trivial.log")
    services = []
    for backend in ("redis", "memory"):
        config, port, metrics = gateway_config(workdir, f"redis://127.0.0.1:{redis_port}/0" if backend == "redis"
                                               else None)
        proc = ManagedProcess(f"rls-{backend}", [sys.executable, "-m", "ratelimit_service", "--config", str(config)],
                              ready=http_ready(f"http://127.0.0.1:{metrics}/metrics"), cwd=ROOT,
                              log_path=workdir / f"rls-{backend}.log")
        services.append((backend, proc, port, metrics))
    procs = [redis, trivial, *[s[1] for s in services]]
    try:
        for proc in procs:
            proc.start().wait_ready(20)
        rows = []
        print(f"load: h2load -c {args.concurrency} -m {args.streams} for {args.seconds:.0f} s per row, "
              "3 descriptors per request; CPU from /proc/<pid>/stat", file=sys.stderr)
        targets: list[tuple[str, ManagedProcess, int, int | None]] = [
            ("trivial always-OK RLS", trivial, trivial_port, None)] + [
            (f"ratelimit_service ({b})", p, port, m) for b, p, port, m in services]
        for name, proc, port, metrics_port in targets:
            if proc is not trivial:
                print(f"  {name}: remaining per descriptor = {check_answer(port)}", file=sys.stderr)
            h2load(port, data, ["-n", "2000", "-c", "4", "-m", "4"])  # warm-up: connections, JIT-free but caches
            rate, cpu_us = throughput(port, proc.proc.pid, data, args.seconds, args.concurrency,  # type: ignore[union-attr]
                                      args.streams)
            before = decision_buckets(metrics_port)
            p50, p99, n = p99_at(port, data, 1000, 3, workdir)
            inside = inside_p99_ms(before, decision_buckets(metrics_port))
            rows.append((name, rate, cpu_us, p50, p99, inside, n))
        base_cpu = rows[0][2]
        print(f"{'server':<32} {'decisions/s':>12} {'CPU µs/dec':>11} {'vs trivial':>10} "
              f"{'p50 ms@1k/s':>12} {'p99 ms@1k/s':>12} {'p99 inside':>11}")
        for name, rate, cpu_us, p50, p99, inside, n in rows:
            print(f"{name:<32} {rate:>12,.0f} {cpu_us:>11.0f} {cpu_us / base_cpu:>9.2f}x {p50:>12.2f} {p99:>12.2f}"
                  f" {inside:>11}   ({n} requests at 1k/s)")
        print("p50/p99 at 1k/s: seen by h2load (client, gRPC, loop); 'p99 inside': the service's own "
              "rate_limit_decision_seconds histogram bucket bound, in ms.")
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
