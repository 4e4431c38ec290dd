"""Scale simulation: 1,000 ADS clients (Envoy-like and service-like) on ONE control-plane replica.

    .venv/bin/python bench/xds_scale.py [--gateways 250] [--routes 200] [--workers 4] [--changes 5]

Each simulated gateway pod is one Envoy-like client (one ADS stream subscribing to CDS, EDS, LDS and RDS,
ACKing every response, as Envoy does in SotW ADS) and three service-like clients (ext_authz, ratelimit,
ext_proc: one stream each, subscribed to their own resource type) — 250 gateways = 1,000 clients, each on its
own HTTP/2 connection (a local subchannel pool per channel, so gRPC does not share one connection between
them). The control plane is the real `python -m xds_server` process with its admin API; the clients run in
`--workers` processes. A route change is PUT on the admin API (which answers when every client ACKed);
each client records when the new version reached it.

Prints one table: push time p50/p99/max over all clients, the PUT's own latency (all ACKed), the server's
RSS per client and its CPU per push, against Istio's published figure (istiod: 1 vCPU and 1.5 GB for
2,000 sidecars, https://istio.io/v1.16/docs/ops/deployment/performance-and-scalability/). Read the figures
as orders of magnitude: one run on a shared 2-core machine, clients and server on the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine_summary, print_table
from outrider.process import ManagedProcess, free_port, grpc_serving
from outrider.service_resource import EXT_AUTHZ_TYPE_URL, EXT_PROC_TYPE_URL, RATELIMIT_TYPE_URL
from xds_server.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE

ADMIN_TOKEN = "bench-admin-token-not-a-secret"  # a throw-away control plane on loopback
SERVICE_TYPES = {"ext_authz": EXT_AUTHZ_TYPE_URL, "ratelimit": RATELIMIT_TYPE_URL, "ext_proc": EXT_PROC_TYPE_URL}
ROUTE_NAME = "outrider_routes"
ISTIO_SIDECARS_PER_VCPU = 2000
ISTIO_BYTES_PER_SIDECAR = 1.5e9 / 2000


def config_data(n_routes: int, n_upstreams: int, ports: dict[str, int], state_dir: Path) -> dict[str, Any]:
    upstreams = [{"name": f"svc-{i}", "endpoints": [{"address": "127.0.0.1", "port": 18080}]}
                 for i in range(n_upstreams)]
    routes = [{"name": f"route-{i}", "match": {"prefix": f"/svc/{i}/"}, "upstream": f"svc-{i % n_upstreams}",
               "public": True, "timeout_ms": 5000} for i in range(n_routes)]
    return {
        "listeners": [{"name": "public", "port": 10000}],
        "upstreams": upstreams,
        "routes": routes,
        "auth": {"providers": [{"name": "dev", "issuer": "https://issuer.example",
                                "jwks_url": "https://issuer.example/jwks.json"}]},
        "rbac": {"roles": {"user": [{"resource": "profile", "actions": ["read"]}]}},
        "logging": {"level": "warning", "decisions": False},
        "services": {"xds": {
            "enabled": True, "port": ports["ads"], "admin_port": ports["admin"], "metrics_port": ports["metrics"],
            "state_dir": str(state_dir),
            # Every gateway's Envoy and services share one snapshot (one node cluster), as a fleet does.
            "node_key": "cluster", "ack_timeout_ms": 60_000,
        }},
    }


# ---- the clients (in worker processes) ------------------------------------------------------------------

class Client:
    """One ADS stream: subscribes to `types`, ACKs every response, notes when `watch` reaches a new version."""

    def __init__(self, node: base_pb2.Node, types: dict[str, list[str]], watch: str, arrived: asyncio.Event) -> None:
        self.node = node
        self.arrived = arrived  # set on every new version of any client of this worker
        self.types = types
        self.watch = watch
        self.initial: asyncio.Event = asyncio.Event()
        self.first_version: str | None = None
        self.changed_at: dict[str, float] = {}  # version → monotonic time it arrived

    async def run(self, channel: grpc.aio.Channel) -> None:
        requests: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()

        async def outgoing() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
            while True:
                yield await requests.get()

        for type_url, names in self.types.items():
            requests.put_nowait(discovery_pb2.DiscoveryRequest(node=self.node, type_url=type_url,
                                                               resource_names=names))
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(outgoing())
        async for response in call:
            now = time.monotonic()
            if response.type_url == self.watch:
                if self.first_version is None:
                    self.first_version = response.version_info
                    self.initial.set()
                elif response.version_info not in self.changed_at:
                    self.changed_at[response.version_info] = now
                    self.arrived.set()
            requests.put_nowait(discovery_pb2.DiscoveryRequest(
                type_url=response.type_url, version_info=response.version_info, response_nonce=response.nonce,
                resource_names=self.types[response.type_url]))


def make_clients(first_gateway: int, n_gateways: int, upstreams: list[str], arrived: asyncio.Event) -> list[Client]:
    clients = []
    for g in range(first_gateway, first_gateway + n_gateways):
        gateway = f"gw-{g}"
        envoy_types = {CLUSTER: [], ENDPOINT: upstreams, LISTENER: [], ROUTE: [ROUTE_NAME]}
        clients.append(Client(base_pb2.Node(id=gateway, cluster="outrider"), envoy_types, ROUTE, arrived))
        for service, type_url in SERVICE_TYPES.items():
            node = base_pb2.Node(id=f"{gateway}/{service}", cluster="outrider")
            clients.append(Client(node, {type_url: []}, type_url, arrived))
    return clients


def worker(port: int, first_gateway: int, n_gateways: int, upstreams: list[str], conn: Connection) -> None:
    asyncio.run(worker_main(port, first_gateway, n_gateways, upstreams, conn))


async def worker_main(port: int, first_gateway: int, n_gateways: int, upstreams: list[str],
                      conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    arrived = asyncio.Event()
    clients = make_clients(first_gateway, n_gateways, upstreams, arrived)
    options = [("grpc.max_receive_message_length", -1), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in clients]
    tasks = [asyncio.create_task(c.run(ch)) for c, ch in zip(clients, channels, strict=True)]
    await asyncio.gather(*(c.initial.wait() for c in clients))
    conn.send("connected")
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "stop":
            break
        version = command  # wait until every client has this version, then report their arrival times
        deadline = time.monotonic() + 120
        while not all(version in c.changed_at for c in clients):
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        conn.send([c.changed_at.get(version) for c in clients])
    for task in tasks:
        task.cancel()
    for channel in channels:
        await channel.close()


# ---- the measuring side --------------------------------------------------------------------------------

def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateways", type=int, default=250, help="simulated gateway pods (4 ADS clients each)")
    parser.add_argument("--routes", type=int, default=200)
    parser.add_argument("--upstreams", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument("--changes", type=int, default=5, help="route changes to push (each measured)")
    args = parser.parse_args()
    ports = {"ads": free_port(), "admin": free_port(), "metrics": free_port()}
    upstreams = [f"svc-{i}" for i in range(args.upstreams)]
    rows: list[tuple[str, str, str]] = []

    def row(what: str, value: str, note: str = "") -> None:
        rows.append((what, value, note))
        print(f"  {what:<52} {value:>12}  {note}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "gateway.yaml"
        path.write_text(yaml.safe_dump(config_data(args.routes, args.upstreams, ports, work / "state")))
        server = ManagedProcess("xds_server", [sys.executable, "-m", "xds_server", "--config", str(path)],
                                ready=grpc_serving("127.0.0.1", ports["ads"]),
                                env={"OUTRIDER_ADMIN_TOKEN": ADMIN_TOKEN}, log_path=work / "xds.log")
        server.start().wait_ready(60)
        assert server.proc is not None
        pid = server.proc.pid
        ctx = multiprocessing.get_context("spawn")  # not fork: a forked child inherits gRPC threads
        workers: list[tuple[Any, Connection]] = []
        try:
            rss_idle = rss_bytes(pid)
            per_worker = [args.gateways // args.workers + (1 if i < args.gateways % args.workers else 0)
                          for i in range(args.workers)]
            started = time.monotonic()
            first = 0
            for n in per_worker:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=worker, args=(ports["ads"], first, n, upstreams, child), daemon=True)
                proc.start()
                workers.append((proc, parent))
                first += n
            for _, conn in workers:
                if not conn.poll(300):
                    raise SystemExit("clients did not connect within 300 s")
                conn.recv()
            n_clients = args.gateways * 4
            row(f"{n_clients} ADS clients connected, first config received",
                f"{time.monotonic() - started:.1f} s", f"{args.gateways} Envoy-like + {args.gateways * 3} service-like")
            rss_loaded = rss_bytes(pid)
            per_client = (rss_loaded - rss_idle) / n_clients
            row("control plane RSS with no clients", f"{rss_idle / 2**20:.0f} MiB", f"{args.routes} routes loaded")
            row(f"control plane RSS with {n_clients} clients", f"{rss_loaded / 2**20:.0f} MiB", "")
            row("memory per client (RSS delta / clients)", f"{per_client / 1024:.0f} KiB",
                f"Istio: istiod 1.5 GB / 2,000 sidecars = {ISTIO_BYTES_PER_SIDECAR / 1024:.0f} KiB per sidecar")
            delays: list[float] = []
            put_times: list[float] = []
            cpu_per_push: list[float] = []
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            with httpx.Client(timeout=180, headers=headers) as admin:
                for i in range(args.changes):
                    body = {"match": {"prefix": f"/svc/{i}/"}, "upstream": upstreams[i % len(upstreams)],
                            "public": True, "timeout_ms": 4000 + i}
                    cpu_before = cpu_seconds(pid)
                    sent = time.monotonic()
                    response = admin.put(f"http://127.0.0.1:{ports['admin']}/v1/routes/route-{i}", json=body)
                    put_times.append(time.monotonic() - sent)
                    if response.status_code != 200:
                        raise SystemExit(f"PUT refused: {response.status_code} {response.text[:300]}")
                    version = response.json()["version"]
                    arrivals: list[float | None] = []
                    for _, conn in workers:
                        conn.send(version)
                    for _, conn in workers:
                        arrivals.extend(conn.recv())
                    cpu_per_push.append(cpu_seconds(pid) - cpu_before)
                    missing = sum(1 for a in arrivals if a is None)
                    if missing:
                        raise SystemExit(f"{missing} clients never got version {version}")
                    delays.extend(a - sent for a in arrivals if a is not None)
            note = f"{args.changes} changes × {n_clients} clients, from the PUT to the client's receipt"
            row("push one route change: p50", f"{percentile(delays, 0.5) * 1e3:.0f} ms", note)
            row("push one route change: p99", f"{percentile(delays, 0.99) * 1e3:.0f} ms", note)
            row("push one route change: max", f"{max(delays) * 1e3:.0f} ms", note)
            row("PUT answered (every client ACKed): median", f"{statistics.median(put_times) * 1e3:.0f} ms", "")
            cpu = statistics.median(cpu_per_push)
            row("control-plane CPU per pushed change", f"{cpu * 1e3:.0f} ms", "user+system, median")
            # At one change per second, one vCPU pushes to this many clients (Istio's figure is steady state
            # under churn of its own load test, so compare orders of magnitude only).
            per_vcpu = n_clients / cpu if cpu > 0 else float("inf")
            row("clients one vCPU serves at one change/s", f"{per_vcpu:,.0f}",
                f"Istio: ~{ISTIO_SIDECARS_PER_VCPU:,} sidecars per istiod vCPU")
        finally:
            for _, conn in workers:
                with contextlib.suppress(OSError):
                    conn.send("stop")
            for proc, _ in workers:
                proc.join(10)
                if proc.is_alive():
                    proc.terminate()
            server.stop()
    print()
    print_table(f"Scale: {args.gateways * 4} ADS clients on one control-plane replica ({machine_summary()})",
                ["measure", "value", "note"], [list(r) for r in rows])


if __name__ == "__main__":
    main()
