"""A scripted ADS client over real gRPC: versions, nonces, stale nonces ignored, NACKed config not resent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from outrider.process import free_port
from tests.xds.conftest import gateway
from xds_server.cache import SnapshotCache
from xds_server.protocol import Node
from xds_server.resources import SnapshotBuilder
from xds_server.service import AdsService
from xds_server.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE

NODE = base_pb2.Node(id="gw-1", cluster="outrider")


class Client:
    """One ADS stream driven by hand; a reader task queues every response."""

    def __init__(self, stub: Any, delta: bool = False) -> None:
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self._call = method(self._iterate())
        self._reader = asyncio.create_task(self._read())

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            yield await self._requests.get()

    async def _read(self) -> None:
        async for response in self._call:
            self._responses.put_nowait(response)

    def send(self, request: Any) -> None:
        self._requests.put_nowait(request)

    async def recv(self, wait_s: float = 5.0) -> Any:
        return await asyncio.wait_for(self._responses.get(), wait_s)

    async def nothing_within(self, seconds: float) -> bool:
        """True when no response arrives within `seconds` (a bounded wait for an absence)."""
        try:
            extra = await asyncio.wait_for(self._responses.get(), seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected response: {extra.type_url} {extra.nonce}")

    def close(self) -> None:
        self._call.cancel()
        self._reader.cancel()


@pytest.fixture
async def server() -> AsyncIterator[tuple[SnapshotCache, Any, SnapshotBuilder]]:
    cache = SnapshotCache(lambda node: node.id)
    grpc_server = grpc.aio.server()
    AdsService(cache).register(grpc_server)
    port = free_port()
    grpc_server.add_insecure_port(f"127.0.0.1:{port}")
    await grpc_server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield cache, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel), SnapshotBuilder()
    await channel.close()
    await grpc_server.stop(0)


def req(
    type_url: str, version: str = "", nonce: str = "", names: tuple[str, ...] = (), error: str | None = None
) -> discovery_pb2.DiscoveryRequest:
    message = discovery_pb2.DiscoveryRequest(
        node=NODE, type_url=type_url, version_info=version, response_nonce=nonce, resource_names=list(names)
    )
    if error is not None:
        message.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return message


async def test_sotw_versions_nonces_stale_and_nack(server: Any) -> None:
    cache, stub, builder = server
    first = builder.build(gateway(), "1")
    cache.set_snapshot("gw-1", first)
    client = Client(stub)
    client.send(req(CLUSTER))
    cds = await client.recv()
    assert cds.version_info == "1" and cds.nonce and cds.type_url == CLUSTER
    assert len(cds.resources) == len(first.get(CLUSTER)) and cds.resources[0].type_url == CLUSTER
    client.send(req(CLUSTER, "1", cds.nonce))
    client.send(req(ENDPOINT, names=("demo",)))
    eds = await client.recv()
    assert eds.type_url == ENDPOINT and len(eds.resources) == 1 and eds.nonce != cds.nonce
    client.send(req(ENDPOINT, "1", eds.nonce, ("demo",)))
    client.send(req(LISTENER))
    lds = await client.recv()
    client.send(req(LISTENER, "1", lds.nonce))
    client.send(req(ROUTE, names=("outrider_routes",)))
    rds = await client.recv()
    client.send(req(ROUTE, "1", rds.nonce, ("outrider_routes",)))
    assert await client.nothing_within(0.3)  # ACKs are not answered
    assert cache.status()["gw-1"]["acked"] == {"cds": "1", "eds": "1", "lds": "1", "rds": "1"}

    # A new route: only the route configuration is pushed, with the new version.
    config = gateway([{"name": "extra", "match": {"prefix": "/extra/"}, "upstream": "demo", "public": True}])
    second = builder.build(config, "2", first)
    push = cache.set_snapshot("gw-1", second)
    pushed = await client.recv()
    assert (pushed.type_url, pushed.version_info) == (ROUTE, "2")
    # A late answer to the old nonce is stale: ignored, it neither ACKs nor NACKs anything.
    client.send(req(ROUTE, "1", rds.nonce, ("outrider_routes",), error="late"))
    assert await client.nothing_within(0.3)
    assert cache.status()["gw-1"]["last_nack"] is None and not push.done.is_set()
    # NACK of the current nonce: recorded, the push fails, the version is not resent.
    client.send(req(ROUTE, "1", pushed.nonce, ("outrider_routes",), error="bad route"))
    assert await push.wait(5)
    assert [n.error for n in push.nacks] == ["bad route"]
    status = cache.status()["gw-1"]
    assert status["acked"]["rds"] == "1" and status["last_nack"]["error"] == "bad route"
    assert await client.nothing_within(0.5)
    # Rolling back pushes the previous routes under their version; the ACK completes that push.
    rollback = cache.set_snapshot("gw-1", first)
    back = await client.recv()
    assert (back.type_url, back.version_info) == (ROUTE, "1")
    client.send(req(ROUTE, "1", back.nonce, ("outrider_routes",)))
    assert await rollback.wait(5) and rollback.acked_by == {"gw-1"} and not rollback.nacks
    client.close()


async def test_node_without_snapshot_waits_then_gets_it(server: Any) -> None:
    cache, stub, builder = server
    client = Client(stub)
    client.send(req(CLUSTER))
    assert await client.nothing_within(0.3)
    cache.set_snapshot("gw-1", builder.build(gateway(), "5"))
    response = await client.recv()
    assert response.version_info == "5" and response.type_url == CLUSTER
    client.close()


async def test_delta_push_after_one_cluster_change_carries_that_cluster(server: Any) -> None:
    cache, stub, builder = server
    upstreams = [{"name": f"svc-{i}", "endpoints": [{"address": "127.0.0.1", "port": 9000 + i}]} for i in range(20)]
    first = builder.build(gateway(upstreams=upstreams), "1")
    cache.set_snapshot("gw-1", first)
    client = Client(stub, delta=True)
    client.send(discovery_pb2.DeltaDiscoveryRequest(node=NODE, type_url=CLUSTER))
    cds = await client.recv()
    assert len(cds.resources) == len(first.get(CLUSTER)) and cds.system_version_info == "1"
    client.send(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=cds.nonce))
    client.send(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, resource_names_subscribe=["svc-3", "svc-4"]))
    eds = await client.recv()
    assert sorted(r.name for r in eds.resources) == ["svc-3", "svc-4"]
    client.send(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, response_nonce=eds.nonce))
    changed = list(upstreams)
    changed[3] = {**upstreams[3], "connect_timeout_ms": 2500}
    second = builder.build(gateway(upstreams=changed), "2", first)
    cache.set_snapshot("gw-1", second)
    pushed = await client.recv()
    assert pushed.type_url == CLUSTER and [r.name for r in pushed.resources] == ["svc-3"]
    assert pushed.resources[0].version == second.get(CLUSTER)["svc-3"].version
    endpoints = await client.recv()  # resent for the warming cluster, and only for it
    assert endpoints.type_url == ENDPOINT and [r.name for r in endpoints.resources] == ["svc-3"]
    client.close()


async def test_hundred_clients_get_one_push(server: Any) -> None:
    cache, stub, builder = server
    first = builder.build(gateway(), "1")
    cache.set_snapshot("gw-1", first)
    clients = [Client(stub) for _ in range(100)]
    for client in clients:
        client.send(req(ROUTE, names=("outrider_routes",)))
    initial = await asyncio.gather(*(c.recv() for c in clients))
    for client, response in zip(clients, initial, strict=True):
        client.send(req(ROUTE, "1", response.nonce, ("outrider_routes",)))
    push = cache.set_snapshot(
        "gw-1",
        builder.build(
            gateway([{"name": "x", "match": {"path": "/x"}, "upstream": "demo", "public": True}]), "2", first
        ),
    )
    pushed = await asyncio.gather(*(c.recv() for c in clients))
    assert {p.version_info for p in pushed} == {"2"}
    for client, response in zip(clients, pushed, strict=True):
        client.send(req(ROUTE, "2", response.nonce, ("outrider_routes",)))
    assert await push.wait(10) and not push.waiting and not push.nacks
    for client in clients:
        client.close()


def test_node_matching_by_cluster() -> None:
    cache = SnapshotCache(lambda node: node.cluster)
    stream = cache.open_stream(Node("any-id", "edge"), False, lambda response: None)
    assert stream.key == "edge"


async def test_only_expected_nodes_may_open_a_stream_and_services_read_their_gateway() -> None:
    from outrider.config.xds import XdsService
    from xds_server.nodes import NodePolicy

    policy = NodePolicy.of(XdsService(node_id="gw-1", node_cluster="outrider"))
    cache = SnapshotCache(policy.key)
    grpc_server = grpc.aio.server()
    AdsService(cache, admits=policy.admits).register(grpc_server)
    port = free_port()
    grpc_server.add_insecure_port(f"127.0.0.1:{port}")
    await grpc_server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    cache.set_snapshot(policy.gateway_key, SnapshotBuilder().build(gateway(), "1"))
    try:
        for node in (base_pb2.Node(id="intruder", cluster="outrider"), base_pb2.Node(id="gw-10", cluster="outrider"),
                     base_pb2.Node(id="", cluster="outrider")):
            call = stub.StreamAggregatedResources(iter([discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER)]))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(call.read(), 5)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, node.id
        assert cache.status() == {}  # a refused node left no trace and answers for nothing
        # A service of the gateway (gw-1/<service>) reads the gateway's snapshot.
        service = base_pb2.Node(id="gw-1/ext_proc", cluster="outrider")
        call = stub.StreamAggregatedResources(iter([discovery_pb2.DiscoveryRequest(node=service, type_url=CLUSTER)]))
        response = await asyncio.wait_for(call.read(), 5)
        assert response.version_info == "1" and response.type_url == CLUSTER
        call.cancel()
    finally:
        await channel.close()
        await grpc_server.stop(0)
