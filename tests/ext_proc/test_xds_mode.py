"""ext_proc in control-plane mode (`--xds`): NOT_SERVING until a version, new versions' plans served at once,
streams in flight keep the plans they started with, a version it cannot build is NACKed and the last stays."""

from __future__ import annotations

import asyncio
import copy
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_proc.app import SERVICE_NAME
from ext_proc.resource import payload
from ext_proc.service import ROUTE_METADATA
from outrider.process import ManagedProcess
from outrider.service_resource import EXT_PROC_TYPE_URL as TYPE
from tests.ext_proc.conftest import config_from, ext_proc_config_dict
from tests.harness import ROOT
from tests.kernel.ads_script import ScriptedAds, start_xds_service, until

NEW_ROUTE = {"name": "lab-new", "match": {"prefix": "/lab/new/"}, "upstream": "demo", "public": True,
             "validation": {"max_url_length": 32, "xss": False, "sql_injection": False}}
XSS_BODY = b'{"comment": "<script>alert(1)</script>"}'


def headers(path: str, *, end_of_stream: bool) -> pb.ProcessingRequest:
    pairs = {":method": "POST", ":path": path, ":authority": "gw", "content-type": "application/json",
             "x-request-id": "r1"}
    return pb.ProcessingRequest(request_headers=pb.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode())
                                            for k, v in pairs.items()]),
        end_of_stream=end_of_stream))


class Stream:
    """One Process stream on a route, message by message."""

    def __init__(self, stub: external_processor_pb2_grpc.ExternalProcessorStub, route: str) -> None:
        self._outbox: asyncio.Queue[pb.ProcessingRequest | None] = asyncio.Queue()
        self.call = stub.Process(self._requests(), metadata=((ROUTE_METADATA, route),), timeout=10)

    async def _requests(self) -> AsyncIterator[pb.ProcessingRequest]:
        while (message := await self._outbox.get()) is not None:
            yield message

    async def send(self, message: pb.ProcessingRequest) -> pb.ProcessingResponse:
        await self._outbox.put(message)
        response: pb.ProcessingResponse = await self.call.read()
        return response

    def close(self) -> None:
        self._outbox.put_nowait(None)


async def health(stub: health_pb2_grpc.HealthStub, name: str) -> int:
    return int((await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)).status)






async def test_ext_proc_serves_pushed_versions(ads: tuple[ScriptedAds, int], tmp_path: Path) -> None:
    servicer, ads_port = ads
    proc, port = start_xds_service("ext_proc", "ext_proc", ads_port, tmp_path)
    try:
        hello = await servicer.next_request(wait_s=30)
        assert (hello.node.id, hello.node.cluster, hello.type_url, hello.version_info) == (
            "gw/ext_proc", "outrider", TYPE, "")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health_stub = health_pb2_grpc.HealthStub(channel)
            stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
            for name in ("", SERVICE_NAME):
                await until(lambda n=name: health(health_stub, n), health_pb2.HealthCheckResponse.NOT_SERVING)
            # Before any version, a stream is refused (Envoy applies its failure mode), never half-served.
            early = Stream(stub, "public")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await early.send(headers("/x", end_of_stream=True))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

            v1 = ext_proc_config_dict()
            servicer.push(TYPE, "v1", payload(config_from(v1)), "n1")
            ack = await servicer.next_request()
            assert (ack.version_info, ack.response_nonce, ack.HasField("error_detail")) == ("v1", "n1", False)
            for name in ("", SERVICE_NAME):
                await until(lambda n=name: health(health_stub, n), health_pb2.HealthCheckResponse.SERVING)

            # v1 has no lab-new: its streams get the default plan (global validation: XSS checked, long URLs ok).
            in_flight = Stream(stub, "lab-new")
            first = await in_flight.send(headers("/lab/new/x", end_of_stream=False))
            assert first.WhichOneof("response") == "request_headers"
            long_path = "/lab/new/" + "x" * 40
            before = Stream(stub, "lab-new")
            assert (await before.send(headers(long_path, end_of_stream=True))).WhichOneof("response") == (
                "request_headers")
            before.close()

            v2 = copy.deepcopy(v1)
            v2["routes"].append(copy.deepcopy(NEW_ROUTE))
            servicer.push(TYPE, "v2", payload(config_from(v2)), "n2")
            assert (await servicer.next_request()).version_info == "v2"

            # A new stream on lab-new gets its own plan at once: max_url_length 32 → 414.
            after = Stream(stub, "lab-new")
            rejected = await after.send(headers(long_path, end_of_stream=True))
            assert rejected.immediate_response.status.code == 414
            after.close()
            # The stream opened under v1 finishes on v1's plan: its body is still checked for XSS.
            body = await in_flight.send(pb.ProcessingRequest(
                request_body=pb.HttpBody(body=XSS_BODY, end_of_stream=True)))
            assert body.immediate_response.status.code == 400
            in_flight.close()

            # A version ext_proc cannot build is NACKed with the reason; v2's plans stay live.
            v3 = copy.deepcopy(v2)
            bad = payload(config_from(v3))
            bad["routes"][-1]["transformations"] = {"request": {"add_headers": {"X-A": "${nope}"}}}
            servicer.push(TYPE, "v3", bad, "n3")
            nack = await servicer.next_request()
            assert (nack.version_info, nack.response_nonce) == ("v2", "n3")
            assert "transformations.request.add_headers" in nack.error_detail.message
            assert "unknown template variable" in nack.error_detail.message
            again = Stream(stub, "lab-new")
            assert (await again.send(headers(long_path, end_of_stream=True))).immediate_response.status.code == 414
            again.close()
            assert await health(health_stub, "") == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.stop()
    assert proc.returncode == 0, (tmp_path / "ext_proc.log").read_text()[-3000:]


def reloads(metrics_port: int, result: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f'outrider_config_reloads_total{{result="{result}",service="ext_proc"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_standalone_mode_reloads_plans_from_the_file(tmp_path: Path) -> None:
    from tests.harness import with_free_ports, write_config

    data = with_free_ports(ext_proc_config_dict())
    path = write_config(data, tmp_path / "gateway.yaml")
    section = data["services"]["ext_proc"]
    proc = ManagedProcess("ext_proc", [sys.executable, "-m", "ext_proc", "--config", str(path)],
                          log_path=tmp_path / "ext_proc.log", cwd=ROOT).start()
    long_path = "/lab/new/" + "x" * 40

    async def code_of_long_path() -> int:
        stream = Stream(stub, "lab-new")
        try:
            return int((await stream.send(headers(long_path, end_of_stream=True))).immediate_response.status.code)
        finally:
            stream.close()

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{section['port']}") as channel:
            health_stub = health_pb2_grpc.HealthStub(channel)
            stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
            await until(lambda: health(health_stub, SERVICE_NAME), health_pb2.HealthCheckResponse.SERVING, 30)
            assert await code_of_long_path() == 0                 # default plan: long URLs are fine
            assert reloads(section["metrics_port"], "applied") == 1

            edited = copy.deepcopy(data)
            edited["routes"].append(copy.deepcopy(NEW_ROUTE))
            write_config(edited, path)
            await until(code_of_long_path, 414)                    # the route's own plan, no restart
            assert reloads(section["metrics_port"], "applied") == 2

            path.write_text(path.read_text().replace("max_url_length: 32", "max_url_length: -5"))
            await until(lambda: asyncio.sleep(0, reloads(section["metrics_port"], "rejected")), 1.0)
            assert await code_of_long_path() == 414                # the last good plans stay
    finally:
        proc.stop()
    assert proc.returncode == 0, (tmp_path / "ext_proc.log").read_text()[-3000:]
    log = (tmp_path / "ext_proc.log").read_text()
    assert "config change rejected" in log and "routes[" in log and "max_url_length" in log
