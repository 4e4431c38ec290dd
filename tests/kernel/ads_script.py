"""A scripted ADS server for the client tests: records every request, sends what the test pushes."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from outrider.process import ManagedProcess, free_port
from outrider.service_resource import pack
from tests.harness import ROOT


class ScriptedAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self) -> None:
        self.requests: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        self.streams = 0
        self._outbox: asyncio.Queue[discovery_pb2.DiscoveryResponse | None] | None = None
        self.stream_open = asyncio.Event()

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Any
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        self.streams += 1
        outbox: asyncio.Queue[discovery_pb2.DiscoveryResponse | None] = asyncio.Queue()
        self._outbox = outbox
        self.stream_open.set()

        async def read() -> None:
            async for request in request_iterator:
                await self.requests.put(request)

        reader = asyncio.create_task(read())
        try:
            while True:
                response = await outbox.get()
                if response is None:
                    return
                yield response
        finally:
            reader.cancel()

    def send(self, response: discovery_pb2.DiscoveryResponse) -> None:
        assert self._outbox is not None, "no stream open"
        self._outbox.put_nowait(response)

    def push(self, type_url: str, version: str, payload: Mapping[str, Any] | None, nonce: str,
             resources: list[any_pb2.Any] | None = None) -> None:
        """One response with the service's resource (payload None: no resource at all)."""
        if resources is None:
            resources = [] if payload is None else [pack(type_url, version, payload)]
        self.send(discovery_pb2.DiscoveryResponse(version_info=version, nonce=nonce, type_url=type_url,
                                                  resources=resources))

    async def next_request(self, wait_s: float = 5.0) -> discovery_pb2.DiscoveryRequest:
        return await asyncio.wait_for(self.requests.get(), wait_s)


async def start_ads(port: int, servicer: ScriptedAds) -> grpc.aio.Server:
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    await server.start()
    return server


async def until(check: Callable[[], Awaitable[Any]], want: Any, wait_s: float = 15.0) -> None:
    """Poll `check` until it returns `want` (an RpcError while the port is not bound yet counts as its code)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    got: Any = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            got = await check()
            if got == want:
                return
        except grpc.aio.AioRpcError as exc:  # the port is not bound yet
            got = exc.code()
        await asyncio.sleep(0.05)
    pytest.fail(f"still {got!r}, wanted {want!r}")


@pytest.fixture
async def ads() -> AsyncIterator[tuple[ScriptedAds, int]]:
    """A scripted ADS server on a free port: (the servicer to push and read with, its port)."""
    port = free_port()
    servicer = ScriptedAds()
    server = await start_ads(port, servicer)
    yield servicer, port
    await server.stop(None)


def start_xds_service(module: str, name: str, ads_port: int, log_dir: Path) -> tuple[ManagedProcess, int]:
    """`python -m <module> --xds` as node gw/<name> of the scripted ADS server: (process, its gRPC port)."""
    port, metrics_port = free_port(), free_port()
    proc = ManagedProcess(name, [
        sys.executable, "-m", module, "--xds", f"127.0.0.1:{ads_port}", "--node-id", f"gw/{name}",
        "--node-cluster", "outrider", "--port", str(port), "--metrics-port", str(metrics_port)],
        log_path=log_dir / f"{name}.log", cwd=ROOT).start()
    return proc, port
