"""Config flow benchmark (issue 10): one change through the control plane, ACKed by Envoy and every service.

    .venv/bin/python bench/config_flow_bench.py [--routes 10000] [--changes 10] [--load-seconds 15]

With N routes loaded (the example gateway plus N generated protected routes, each with its own
transformations, so every service's resource grows with N):
- snapshot build + every service's resource: cold, and after one route change, in this process; the
  baseline in the same run is the same build without the services' resources (Envoy's share alone);
- one route change through the admin API on a real stack (xds_server, ext_authz, ratelimit, ext_proc
  as ADS clients, Envoy), answered once every node ACKed: median and max over --changes PUTs;
- request latency while versions are applied: open-loop load (h2load, fixed rate) on a protected route
  through the whole pipeline, once with no change and once with a route change every second; p50/p99
  with changes as a ratio to the run without.

Prints one table. Every figure is from a shared 2-core machine: compare the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import h2load_fixed_rate, machine_summary, print_table
from outrider.config import load_config_data
from outrider.plugins import discover
from outrider.supervisor import DEV_ADMIN_TOKEN_FILE
from tests.harness import EXAMPLE_CONFIG, KEYS_DIR, Stack, example_config_dict, with_free_ports, write_config
from xds_server.app import plugin_resources
from xds_server.resources import SnapshotBuilder


def big_config(n_routes: int) -> dict[str, Any]:
    data = with_free_ports(example_config_dict())
    data["logging"] = {"level": "warning", "decisions": False}
    data["services"]["xds"]["ack_timeout_ms"] = 30_000
    generated = [
        {
            "name": f"gen-{i}",
            "match": {"prefix": f"/gen/{i}/"},
            "upstream": "demo",
            "resource": "profile",
            "transformations": {"request": {"add_headers": {"X-Gen": str(i)}}},
        }
        for i in range(n_routes)
    ]
    data["routes"] = data["routes"][:-1] + generated + data["routes"][-1:]  # /api/v1/search stays last
    return data


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def bench_build(data: dict[str, Any], rows: list[list[str]]) -> None:
    config = load_config_data(data, "<bench>", EXAMPLE_CONFIG.parent)
    with_services = SnapshotBuilder(plugin_resources(discover()))
    envoy_only = SnapshotBuilder()
    timings: dict[str, list[float]] = {"cold+": [], "cold": [], "change+": [], "change": []}
    for _ in range(3):
        for label, builder in (("", envoy_only), ("+", with_services)):
            fresh = type(builder)(builder._service_resources)
            started = time.perf_counter()
            first = fresh.build(config, "1")
            timings["cold" + label].append(time.perf_counter() - started)
            routes = list(config.routes)
            routes[5] = routes[5].model_copy(update={"timeout_ms": 1234})
            changed = config.model_copy(update={"routes": routes})
            started = time.perf_counter()
            fresh.build(changed, "2", first)
            timings["change" + label].append(time.perf_counter() - started)
    for kind in ("cold", "change"):
        base, full = statistics.median(timings[kind]), statistics.median(timings[kind + "+"])
        rows.append([f"snapshot build, {kind} (+ 3 service resources)", ms(full),
                     f"Envoy's share alone {ms(base)}; ratio {full / base:.2f}×; median of 3"])


def put_route(admin: httpx.Client, i: int) -> tuple[float, list[str]]:
    body = {"match": {"prefix": f"/changed/{i}/"}, "upstream": "demo", "resource": "profile",
            "transformations": {"request": {"add_headers": {"X-Changed": str(i)}}}}
    started = time.perf_counter()
    answer = admin.put("/v1/routes/changed", json=body)
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    return elapsed, answer.json()["acked_by"]


def bench_stack(data: dict[str, Any], changes: int, load_s: int, rows: list[list[str]]) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="config-flow-"))
    stack = Stack(write_config(data, workdir / "gateway.yaml"), data, workdir)
    started = time.perf_counter()
    stack.start()
    rows.append(["stack start with the routes loaded", f"{time.perf_counter() - started:.1f} s", ""])
    xds = data["services"]["xds"]
    try:
        token = (workdir / DEV_ADMIN_TOKEN_FILE).read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{xds['admin_port']}", timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as admin:
            put_route(admin, 0)  # warm: every process has built the big version once
            results = [put_route(admin, i) for i in range(1, changes + 1)]
            times = [t for t, _ in results]
            acked = sorted(results[-1][1])
            rows.append(["one route change, ACKed by every node", ms(statistics.median(times)),
                         f"max {ms(max(times))}; {changes} PUTs; acked_by {', '.join(acked)}"])
            token = stack.token(sub="bench", roles=("user",), tier="enterprise", ttl_s=3600)
            url = f"{stack.url}/api/v1/users/me"
            headers = {"authorization": f"Bearer {token}"}
            quiet = h2load_fixed_rate(url, headers, rate=200, seconds=load_s, workdir=workdir)
            stop = threading.Event()

            def changer() -> None:
                i = 100
                while not stop.wait(1.0):
                    i += 1
                    put_route(admin, i)

            thread = threading.Thread(target=changer)
            thread.start()
            try:
                busy = h2load_fixed_rate(url, headers, rate=200, seconds=load_s, workdir=workdir)
            finally:
                stop.set()
                thread.join()
            rows.append(["p50 at 200 req/s, no change → a change every second",
                         f"{busy.p50_ms:.2f} ms", f"without changes {quiet.p50_ms:.2f} ms "
                         f"({busy.p50_ms / quiet.p50_ms:.2f}×)"])
            rows.append(["p99 at 200 req/s, no change → a change every second",
                         f"{busy.p99_ms:.2f} ms", f"without changes {quiet.p99_ms:.2f} ms "
                         f"(+{busy.p99_ms - quiet.p99_ms:.2f} ms); non-2xx {quiet.non_2xx}/{busy.non_2xx}"])
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--load-seconds", type=int, default=15)
    parser.add_argument("--skip-stack", action="store_true")
    args = parser.parse_args()
    assert KEYS_DIR.exists()
    data = big_config(args.routes)
    rows: list[list[str]] = []
    bench_build(data, rows)
    if not args.skip_stack:
        bench_stack(data, args.changes, args.load_seconds, rows)
    print_table(f"Config flow with {args.routes:,} routes — {machine_summary()}", ["what", "value", "note"], rows)


if __name__ == "__main__":
    main()
