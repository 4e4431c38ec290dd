"""xds_server benchmark: snapshot build, delta push size, 100 ADS clients, and a route change live in Envoy.

    .venv/bin/python bench/xds_bench.py [--routes 10000] [--clusters 1000] [--clients 100] [--skip-envoy]

Prints one table. Every figure is one run on a shared 2-core machine: read them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
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

from outrider.config import GatewayConfig, config_from_data
from outrider.envoy_ads import compile_ads_bootstrap
from outrider.process import ManagedProcess, free_port, grpc_serving, http_ready, tcp_ready
from outrider.supervisor import envoy_argv
from xds_server.cache import SnapshotCache
from xds_server.delta import DeltaStream
from xds_server.protocol import DeltaRequest
from xds_server.resources import SnapshotBuilder
from xds_server.service import AdsService, ResponseEncoder
from xds_server.snapshot import CLUSTER, ENDPOINT, ORDER, ROUTE, Snapshot

ROWS: list[tuple[str, str, str]] = []
ADMIN_TOKEN = "bench-admin-token-not-a-secret"  # a throw-away stack on loopback


def row(what: str, value: str, note: str = "") -> None:
    ROWS.append((what, value, note))
    print(f"  {what:<58} {value:>12}  {note}", file=sys.stderr, flush=True)


def config_data(n_routes: int, n_clusters: int, upstream_port: int = 18080) -> dict[str, Any]:
    """n_routes public routes over n_clusters upstreams (one endpoint each: the demo upstream)."""
    upstreams = [
        {"name": f"svc-{i}", "endpoints": [{"address": "127.0.0.1", "port": upstream_port}]} for i in range(n_clusters)
    ]
    routes = [
        {
            "name": f"route-{i}",
            "match": {"prefix": f"/svc/{i}/"},
            "upstream": f"svc-{i % n_clusters}",
            "public": True,
            "timeout_ms": 5000,
        }
        for i in range(n_routes)
    ]
    return {
        "listeners": [{"name": "public", "port": 10000}],
        "upstreams": upstreams,
        "routes": routes,
        "auth": {
            "providers": [
                {"name": "dev", "issuer": "https://issuer.example", "jwks_url": "https://issuer.example/jwks.json"}
            ]
        },
        "rbac": {"roles": {"user": [{"resource": "profile", "actions": ["read"]}]}},
        "logging": {"level": "warning", "decisions": False},
    }


def encode_all(snapshot: Snapshot) -> int:
    """Serialize every type as a SotW response would carry it; returns the bytes."""
    from xds_server.protocol import SotwResponse

    encoder = ResponseEncoder()
    return sum(
        len(
            encoder.encode(
                SotwResponse(t, snapshot.type_version(t), "1", tuple(snapshot.get(t).values()), snapshot.version)
            )
        )
        for t in ORDER
    )


def bench_build(n_routes: int, n_clusters: int) -> tuple[GatewayConfig, Snapshot]:
    # Once per process: imports of the proto packages the Any payloads name, the encoder's field tables.
    started = time.perf_counter()
    encode_all(SnapshotBuilder().build(config_from_data(config_data(10, 10)), "0"))
    row("process warm-up: first build (10 routes)", f"{(time.perf_counter() - started) * 1e3:.0f} ms",
        "proto imports and encoder tables, once per process")
    config = config_from_data(config_data(n_routes, n_clusters))
    builder = SnapshotBuilder()
    started = time.perf_counter()
    first = builder.build(config, "1")
    size = encode_all(first)
    row(
        f"cold build+serialize {n_routes} routes/{n_clusters} clusters",
        f"{(time.perf_counter() - started) * 1e3:.0f} ms",
        f"{size / 1e6:.1f} MB, empty builder cache (fast encoder; json_format only for shapes it leaves)",
    )
    routes = list(config.routes)
    routes[n_routes // 2] = routes[n_routes // 2].model_copy(update={"timeout_ms": 1234})
    changed = config.model_copy(update={"routes": routes})
    started = time.perf_counter()
    second = builder.build(changed, "2", first)
    encode_all(second)
    row(
        "rebuild+serialize after one route change",
        f"{(time.perf_counter() - started) * 1e3:.0f} ms",
        "what an API change costs",
    )
    reparsed = config_from_data(changed.model_dump(mode="json"))
    started = time.perf_counter()
    builder.build(reparsed, "3", second)
    row(
        "rebuild from a freshly parsed file (same content)",
        f"{(time.perf_counter() - started) * 1e3:.0f} ms",
        "what a config file edit costs",
    )
    return config, first


def bench_delta(config: GatewayConfig, first: Snapshot) -> None:
    stream = DeltaStream()
    builder = SnapshotBuilder()
    first = builder.build(config, "1")
    (cds,), _ = stream.on_request(DeltaRequest(CLUSTER), first)
    (eds,), _ = stream.on_request(DeltaRequest(ENDPOINT, subscribe=tuple(first.get(ENDPOINT))), first)
    stream.on_request(DeltaRequest(CLUSTER, nonce=cds.nonce), first)
    stream.on_request(DeltaRequest(ENDPOINT, nonce=eds.nonce), first)
    upstreams = list(config.upstreams)
    upstreams[3] = upstreams[3].model_copy(update={"connect_timeout_ms": 2500})
    second = builder.build(config.model_copy(update={"upstreams": upstreams}), "2", first)
    pushed = stream.on_snapshot(second)
    summary = ", ".join(f"{r.type_url.rsplit('.', 1)[1]}: {[x.name for x in r.resources]}" for r in pushed)
    row("delta push after one cluster changes: resources sent", str(sum(len(r.resources) for r in pushed)), summary)


async def _ads_client(i: int, channel: grpc.aio.Channel, acked: asyncio.Queue[float]) -> None:
    """One SotW ADS client asking for the route table and ACKing every response."""
    requests: asyncio.Queue[Any] = asyncio.Queue()

    async def iterate() -> AsyncIterator[Any]:
        while True:
            yield await requests.get()

    node = base_pb2.Node(id=f"envoy-{i}", cluster="outrider")
    requests.put_nowait(discovery_pb2.DiscoveryRequest(node=node, type_url=ROUTE, resource_names=["outrider_routes"]))
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(iterate())
    async for response in call:
        requests.put_nowait(
            discovery_pb2.DiscoveryRequest(
                type_url=ROUTE,
                version_info=response.version_info,
                response_nonce=response.nonce,
                resource_names=["outrider_routes"],
            )
        )
        acked.put_nowait(time.perf_counter())


def _channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)])


def _client_process(port: int, n_clients: int, conn: Connection) -> None:
    asyncio.run(_client_process_main(port, n_clients, conn))


async def _client_process_main(port: int, n_clients: int, conn: Connection) -> None:
    """The clients in their own process: reports when all got the routes, then when all got the push."""
    loop = asyncio.get_running_loop()
    channels = [_channel(port) for _ in range(n_clients)]
    acked = asyncio.Queue[float]()
    started = time.perf_counter()
    tasks = [asyncio.create_task(_ads_client(i, ch, acked)) for i, ch in enumerate(channels)]
    for _ in range(n_clients):
        await acked.get()
    conn.send(("initial", time.perf_counter() - started))
    for _ in range(n_clients):
        await acked.get()
    conn.send(("pushed", 0.0))
    await loop.run_in_executor(None, conn.recv)  # stop
    for task in tasks:
        task.cancel()
    for channel in channels:
        await channel.close()


async def bench_clients(config: GatewayConfig, n_clients: int, separate: bool) -> None:
    cache = SnapshotCache(lambda node: node.cluster)
    builder = SnapshotBuilder()
    first = builder.build(config, "1")
    cache.set_snapshot("outrider", first)
    server = grpc.aio.server(options=[("grpc.max_send_message_length", -1)])
    AdsService(cache).register(server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    loop = asyncio.get_running_loop()
    where = "grpc.aio clients in a separate process" if separate else "grpc.aio clients in this process"
    tasks: list[asyncio.Task[None]] = []
    channels: list[grpc.aio.Channel] = []
    acked = asyncio.Queue[float]()
    if separate:
        # spawn, not fork: a forked child would inherit this process's gRPC threads.
        ctx = multiprocessing.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=_client_process, args=(port, n_clients, child_conn), daemon=True)
        proc.start()
        _, elapsed = await loop.run_in_executor(None, conn.recv)
    else:
        channels = [_channel(port) for _ in range(n_clients)]
        started = time.perf_counter()
        tasks = [asyncio.create_task(_ads_client(i, ch, acked)) for i, ch in enumerate(channels)]
        for _ in range(n_clients):
            await acked.get()
        elapsed = time.perf_counter() - started
    row(
        f"{n_clients} ADS clients connected, initial routes received",
        f"{elapsed * 1e3:.0f} ms",
        f"RDS {len(first.get(ROUTE)['outrider_routes'].body) / 1e6:.1f} MB each; {where}",
    )
    routes = list(config.routes)
    routes[7] = routes[7].model_copy(update={"timeout_ms": 999})
    second = builder.build(config.model_copy(update={"routes": routes}), "2", first)
    started = time.perf_counter()
    push = cache.set_snapshot("outrider", second)
    ok = await push.wait(60)
    row(
        f"push one route change to {n_clients} ADS clients, all ACKed",
        f"{(time.perf_counter() - started) * 1e3:.0f} ms",
        f"{where}; complete={ok and not push.waiting}",
    )
    if separate:
        await loop.run_in_executor(None, conn.recv)  # the clients saw the push too
        conn.send("stop")
        await loop.run_in_executor(None, proc.join, 20)
        if proc.is_alive():
            proc.terminate()
    for task in tasks:
        task.cancel()
    for channel in channels:
        await channel.close()
    await server.stop(0)


def bench_envoy(n_routes: int, n_clusters: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo_port, listener_port, admin_port = free_port(), free_port(), free_port()
        xds = {
            "enabled": True,
            "port": free_port(),
            "admin_port": free_port(),
            "metrics_port": free_port(),
            "state_dir": str(work / "state"),
        }
        data = config_data(n_routes, n_clusters, demo_port)
        data["listeners"][0]["port"] = listener_port
        data["admin"] = {"port": admin_port}
        data["services"] = {"xds": xds, "ext_authz": {"port": free_port(), "metrics_port": free_port()}}
        path = work / "gateway.yaml"
        path.write_text(yaml.safe_dump(data))
        config = config_from_data(data)
        bootstrap = work / "bootstrap.yaml"
        bootstrap.write_text(yaml.safe_dump(compile_ads_bootstrap(config)))
        procs = [
            ManagedProcess(
                "demo",
                [sys.executable, "-m", "outrider.demo_upstream", "--port", str(demo_port)],
                ready=tcp_ready("127.0.0.1", demo_port),
                log_path=work / "demo.log",
            ),
            ManagedProcess(
                "xds_server",
                [sys.executable, "-m", "xds_server", "--config", str(path)],
                ready=grpc_serving("127.0.0.1", xds["port"]),
                env={"OUTRIDER_ADMIN_TOKEN": ADMIN_TOKEN},
                log_path=work / "xds.log",
            ),
            ManagedProcess(
                "envoy",
                envoy_argv(bootstrap),
                ready=http_ready(f"http://127.0.0.1:{admin_port}/ready"),
                log_path=work / "envoy.log",
            ),
        ]
        started = time.perf_counter()
        try:
            for proc in procs:
                proc.start().wait_ready(120)
            row(
                f"stack start with {n_routes} routes (xds_server + Envoy ready)",
                f"{(time.perf_counter() - started):.1f} s",
                "includes the cold snapshot build",
            )
            admin = f"http://127.0.0.1:{xds['admin_port']}"
            timings = []
            with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
                for i in range(5):
                    route = {"match": {"prefix": f"/live-{i}/"}, "upstream": "svc-0", "public": True}
                    started = time.perf_counter()
                    put = client.put(f"{admin}/v1/routes/live-{i}", json=route)
                    status = client.get(f"http://127.0.0.1:{listener_port}/live-{i}/x").status_code
                    timings.append(time.perf_counter() - started)
                    assert put.status_code == 200 and status == 200, (put.text, status)
            timings.sort()
            row(
                "route change live in Envoy (PUT until ACK, then a request)",
                f"{timings[len(timings) // 2] * 1e3:.0f} ms",
                f"median of 5, max {timings[-1] * 1e3:.0f} ms, {n_routes} routes loaded",
            )
        finally:
            for proc in reversed(procs):
                proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--clusters", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument(
        "--clients-in", choices=["process", "server", "both"], default="both",
        help="run the simulated ADS clients in their own process, in the server's, or both in turn",
    )
    parser.add_argument("--skip-envoy", action="store_true")
    args = parser.parse_args()
    config, first = bench_build(args.routes, args.clusters)
    bench_delta(config, first)
    for separate in {"process": [True], "server": [False], "both": [True, False]}[args.clients_in]:
        asyncio.run(bench_clients(config, args.clients, separate))
    if not args.skip_envoy:
        bench_envoy(args.routes, args.clusters)
    print(f"\n| {'measure':<58} | {'value':>12} | note |")
    print(f"|{'-' * 60}|{'-' * 14}|------|")
    for what, value, note in ROWS:
        print(f"| {what:<58} | {value:>12} | {note} |")


if __name__ == "__main__":
    main()
