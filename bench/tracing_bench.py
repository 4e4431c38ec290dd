"""What tracing costs: the full stack with tracing off vs on at the design's 10 %, on a public route.

Two stacks from examples/gateway.yaml (Envoy + ext_authz + ratelimit + ext_proc + xds_server + demo upstream),
identical but for tracing: the "on" stack's processes get OTEL_EXPORTER_OTLP_ENDPOINT (an in-process OTLP/gRPC
receiver that counts spans), so Envoy samples 10 % of requests and the services add their spans to those. The
per-IP limit is lifted so that every request goes the whole way. Only one stack is loaded at a time; rounds
interleave the two so drift hits both alike; with --paired both stacks are loaded at once in every round
instead, so that other work on a shared machine weighs on both alike (steadier there), on new stacks each round
started in turn "on" first and "off" first (a stack's own luck, e.g. how Envoy's workers split the
connections, measured up to ±20 % between two identical stacks, does not stay with one side); --calibrate starts
the "on" stack like the "off" one: its ratio is the method's own noise. Per run: req/s at saturation (wrk,
closed loop) and the CPU the stack's processes (Envoy, services, control plane; not the upstream) spend per
request (/proc). Medians.

With --all the comparison is the issue's whole observability bill: "off" has no access log and no tracing;
"on" has the access log (to a file), tracing at --percent and the gateway metrics scraped every
--scrape-interval seconds (the Envoy-derived collector on ext_authz's /metrics, and the other services'
/metrics), once at the start of each run and then at that interval. The default 15 s is what Prometheus's own
example prometheus.yml sets (its built-in default is 1 m); a 1 s scrape is no deployment's setting and made
the scrapes ~1 % of the stack's CPU. What one scrape costs each service is measured on its own, before the runs, and
printed with what it comes to per request at 1 s and at the interval used.

The OTLP receiver stands in for a collector that in production runs elsewhere: it keeps each export call's
bytes and decodes them after the runs, so that what it spends on the same two cores during a run is what
receiving costs (the gRPC call), not a Python decode of every span. Its CPU is printed apart ("collector").

Run: .venv/bin/python bench/tracing_bench.py [--seconds 10] [--rounds 3] [--connections 32] [--percent 10] [--all]
     [--scrape-interval 15] [--paired] [--calibrate]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench.common import cpu_seconds, machine_summary, print_table, tool_version, wrk
from outrider.process import free_port
from outrider.supervisor import envoy_binary
from tests.harness import Stack, child_pids, example_config_dict, with_free_ports, write_config

PATH = "/api/v1/public/items/1"  # the whole pipeline: auth check, rate limit check, ext_proc, upstream (not cached)
MAX_SECONDS = 10.0
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SERVICES = ("ext_authz", "ratelimit", "ext_proc")
SCRAPES_MEASURED = 20  # per service, to price one scrape


class RawReceiver(grpc.GenericRpcHandler):
    """OTLP/gRPC Export that keeps each call's bytes undecoded (an empty response is a valid empty reply)."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self._lock = threading.Lock()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method != EXPORT_METHOD:
            return None
        return grpc.unary_unary_rpc_method_handler(self._export)  # no (de)serializers: bytes in, bytes out

    def _export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.calls.append(request)
        return b""

    def span_names(self) -> list[tuple[str, bytes]]:
        """(name, trace id) of every span received, decoded now (after the runs)."""
        out = []
        for data in self.calls:
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(data)
            out += [(span.name, span.trace_id) for resource in request.resource_spans
                    for scope in resource.scope_spans for span in scope.spans]
        return out


def serve_raw_receiver() -> tuple[RawReceiver, grpc.Server, int]:
    receiver = RawReceiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[receiver])
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return receiver, server, port


def start(tracing: bool, percent: float, workdir: Path, collector: int, everything: bool = False) -> Stack:
    data = with_free_ports(example_config_dict())
    data["logging"]["decisions"] = False  # the services' decision lines are not what is measured
    if everything:  # the access log is part of the bill: on with tracing, off without
        data["logging"]["access_log"] = {"enabled": tracing, "path": str(workdir / "access.log")}
    data["logging"]["tracing"] = {"sampling_percent": percent}
    data["rate_limits"]["per_ip"] = {"requests_per_unit": 10_000_000, "unit": "second"}
    stack = Stack(write_config(data, workdir / "gateway.yaml"), data, workdir)
    # The processes inherit the environment at start: only the "on" stack sees a collector.
    if tracing:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{collector}"
    else:
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    try:
        return stack.start()
    except BaseException:
        stack.stop()
        raise
    finally:
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)


def stack_cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by each process of the stack (a service's workers too), the upstream aside."""
    out: dict[str, float] = {}
    for name, managed in stack.procs.items():
        if managed.proc is None or name == "demo-upstream":
            continue
        out[name] = 0.0
        for pid in {managed.proc.pid, *child_pids(managed.proc.pid)}:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a worker that just ended
                out[name] += cpu_seconds(pid)
    return out


def metrics_urls(stack: Stack) -> dict[str, str]:
    services = stack.data["services"]
    return {name: f"http://127.0.0.1:{services[name]['metrics_port']}/metrics"
            for name in SERVICES if "metrics_port" in services.get(name, {})}


def scrape_cost_ms(stack: Stack) -> dict[str, float]:
    """CPU milliseconds one /metrics scrape costs each service (its process and workers), idle stack."""
    out = {}
    with httpx.Client(timeout=5) as client:
        for name, url in metrics_urls(stack).items():
            client.get(url)  # first scrape: imports, first Envoy connection
            before = stack_cpu(stack)[name]
            for _ in range(SCRAPES_MEASURED):
                client.get(url).raise_for_status()
            out[name] = (stack_cpu(stack)[name] - before) / SCRAPES_MEASURED * 1000
    return out


class Scraper:
    """Scrapes every /metrics of a stack at the start of a run, then every `interval_s` while it lasts."""

    def __init__(self, stack: Stack, interval_s: float) -> None:
        self.urls = list(metrics_urls(stack).values())
        self.interval_s = interval_s
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while True:
                for url in self.urls:
                    with contextlib.suppress(httpx.HTTPError):
                        client.get(url)
                        self.scrapes += 1
                if self._stop.wait(self.interval_s):
                    return

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--percent", type=float, default=10.0)
    parser.add_argument("--all", action="store_true", help="on = access log + tracing + metrics scraped; off = none")
    parser.add_argument("--paired", action="store_true",
                        help="load both stacks at once in each round, new stacks each round (shared machine)")
    parser.add_argument("--calibrate", action="store_true",
                        help="A/A: the 'on' stack is started like the 'off' one; its ratio is the method's noise")
    parser.add_argument("--scrape-interval", type=float, default=15.0, help="seconds between scrapes (--all)")
    args = parser.parse_args()
    seconds = min(args.seconds, MAX_SECONDS)  # bounded: the machine is shared
    receiver, server, collector = serve_raw_receiver()
    workdir = Path(tempfile.mkdtemp(prefix="tracing-bench-"))
    stacks: dict[bool, Stack] = {}
    samples: dict[bool, list[tuple[float, int, int, float]]] = {True: [], False: []}
    cpu: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    try:
        def start_both(first: bool) -> None:
            for on in (first, not first):
                for old in [stacks.pop(on)] if on in stacks else []:
                    old.stop()
                run_dir = Path(tempfile.mkdtemp(prefix=f"{'on' if on else 'off'}-", dir=workdir))
                stacks[on] = start(on and not args.calibrate, args.percent, run_dir, collector, everything=args.all)
            for on in (True, False):  # warm-up: JWKS, first connections, Python imports on the hot path
                wrk(stacks[on].url + PATH, {}, 1.0, connections=args.connections)

        start_both(True)
        scrape_ms = scrape_cost_ms(stacks[True]) if args.all and not args.calibrate else {}
        for round_ in range(args.rounds):
            if args.paired and round_ > 0:
                # New stacks each round, started in turn first: a stack's own luck (how Envoy's workers split
                # the connections, which process started first) does not stay with one side.
                start_both(round_ % 2 == 0)
            # Paired: both stacks loaded at once, so the other work on the machine weighs on both alike.
            order = [(True, False)] if args.paired else [(True,), (False,)] if round_ % 2 == 0 else [(False,), (True,)]
            for group in order:
                before = {on: stack_cpu(stacks[on]) for on in group}
                collector_before = time.process_time()  # this process: the OTLP receiver and the scrapes
                with Scraper(stacks[True], args.scrape_interval) if (True in group and args.all
                                                                     and not args.calibrate) \
                        else contextlib.nullcontext(), ThreadPoolExecutor(len(group)) as pool:
                    runs = {on: pool.submit(wrk, stacks[on].url + PATH, {}, seconds, connections=args.connections)
                            for on in group}
                    results = {on: run.result() for on, run in runs.items()}
                collector_s = time.process_time() - collector_before
                for on, result in results.items():
                    after = stack_cpu(stacks[on])
                    count = max(result.requests, 1)
                    per_request = {n: (after[n] - before[on][n]) / count * 1e6 for n in after}
                    cpu[on].append({**per_request, "collector": collector_s / count * 1e6 if on else 0.0})
                    samples[on].append((result.rps, result.requests, result.non_2xx, sum(per_request.values())))
                    print(f"round {round_ + 1} tracing {'on ' if on else 'off'}: {result.rps:8.0f} req/s", flush=True)
    finally:
        for stack in stacks.values():
            stack.stop()
        server.stop(0)
    off_rps = statistics.median(s[0] for s in samples[False])
    rows = []
    for on in (True, False):
        rps = statistics.median(s[0] for s in samples[on])
        cpu_us = statistics.median(s[3] for s in samples[on])
        label = ("off (A/A)" if args.calibrate else f"{args.percent:g} %") if on else "off"
        rows.append([f"GET {PATH}", label, f"{rps:.0f}", f"{rps / off_rps:.3f}",
                     f"{cpu_us:.0f}", str(sum(s[2] for s in samples[on]))])
    version = tool_version([envoy_binary(), "--version"], r"/(\d+\.\d+\.\d+)/")
    what = "A/A calibration (both stacks off)" if args.calibrate else \
        "Access log + tracing + metrics" if args.all else "Tracing"
    print_table(f"{what} cost, wrk -c {args.connections}, {seconds:g} s x {args.rounds} rounds"
                f"{', paired (both stacks loaded at once)' if args.paired else ''} "
                f"(medians; Envoy {version}; {machine_summary()})",
                ["request", "access log + tracing + scrapes" if args.all else "tracing", "req/s", "ratio to off",
                 "stack CPU µs/req", "non-2xx"], rows)
    print("\nCPU µs per request by process (medians), off → on (collector: the in-process OTLP receiver, on the"
          " same 2 cores):")
    for name in cpu[False][0]:
        off_us = statistics.median(c[name] for c in cpu[False])
        on_us = statistics.median(c[name] for c in cpu[True])
        print(f"  {name:12s} {off_us:7.0f} → {on_us:7.0f}")
    names = receiver.span_names()
    traced = len({trace for name, trace in names if name == "gateway_receive"})
    total = sum(s[1] for s in samples[True])
    print(f"\ntraces received from the 'on' stack: {traced} of {total} measured requests (+ warm-up); "
          f"spans: {len(names)} in {len(receiver.calls)} export calls")
    if scrape_ms:
        on_rps = statistics.median(s[0] for s in samples[True])
        print(f"\nOne /metrics scrape, CPU ms (idle stack, {SCRAPES_MEASURED} scrapes each), and what it comes to per "
              f"request at {on_rps:.0f} req/s:")
        for name, ms in scrape_ms.items():
            print(f"  {name:12s} {ms:6.2f} ms   every 1 s: {ms * 1000 / on_rps:5.1f} µs/req   every "
                  f"{args.scrape_interval:g} s: {ms * 1000 / on_rps / args.scrape_interval:5.2f} µs/req")


if __name__ == "__main__":
    main()
