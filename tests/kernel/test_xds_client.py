"""The services' ADS client: ACK/NACK decisions (sans-IO) and the real thing against a scripted ADS server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outrider.process import free_port
from outrider.service_main import ServiceSpec, StartupSettings, XdsSource, run_service
from outrider.service_resource import EXT_AUTHZ_TYPE_URL, EXT_PROC_TYPE_URL, pack
from outrider.xds_client import ConfigRejected, ServiceConfigClient, Subscription, Update, service_node_id
from tests.kernel.ads_script import ScriptedAds, start_ads

TYPE = EXT_PROC_TYPE_URL
INVALID_ARGUMENT = 3


def response(version: str, nonce: str, payloads: list[dict[str, Any]]) -> discovery_pb2.DiscoveryResponse:
    return discovery_pb2.DiscoveryResponse(version_info=version, nonce=nonce, type_url=TYPE,
                                           resources=[pack(TYPE, version, p) for p in payloads])


# ---- the decisions, without gRPC ----------------------------------------------------------------------------


def test_node_id_of_a_service() -> None:
    assert service_node_id("outrider-gateway", "ext_authz") == "outrider-gateway/ext_authz"


def test_ack_nack_decisions() -> None:
    sub = Subscription(base_pb2.Node(id="gw/ext_proc", cluster="outrider"), TYPE)
    first = sub.initial_request()
    assert (first.node.id, first.node.cluster, first.type_url, first.version_info, first.response_nonce) == (
        "gw/ext_proc", "outrider", TYPE, "", "")

    r1 = response("v1", "n1", [{"a": 1}])
    step = sub.on_response(r1)
    assert step == Update("v1", {"a": 1})
    ack = sub.applied(r1, "v1")
    assert (ack.version_info, ack.response_nonce, ack.HasField("error_detail")) == ("v1", "n1", False)

    r2 = response("v2", "n2", [{"a": 2}])
    assert isinstance(sub.on_response(r2), Update)
    nack = sub.refused(r2, "no good")
    assert (nack.version_info, nack.response_nonce) == ("v1", "n2")     # the last good version, this nonce
    assert (nack.error_detail.code, nack.error_detail.message) == (INVALID_ARGUMENT, "no good")
    assert sub.applied_version == "v1"

    # Zero resources, several, or a resource we cannot read: NACKed before any apply.
    for bad, reason in ((response("v3", "n3", []), "no resource"),
                        (response("v3", "n3", [{"a": 3}, {"a": 4}]), "2 resources"),
                        (discovery_pb2.DiscoveryResponse(version_info="v3", nonce="n3", type_url=TYPE,
                                                         resources=[pack(EXT_AUTHZ_TYPE_URL, "v3", {})]),
                         "where 'type.googleapis.com/outrider.config.v1.ExtProcConfig' was expected")):
        step = sub.on_response(bad)
        assert isinstance(step, discovery_pb2.DiscoveryRequest)
        assert (step.version_info, step.response_nonce) == ("v1", "n3")
        assert reason in step.error_detail.message

    # The applied resource again (a resend after a reconnect): ACKed without applying it twice.
    again = response("v1", "n4", [{"a": 1}])
    step = sub.on_response(again)
    assert isinstance(step, discovery_pb2.DiscoveryRequest)
    assert (step.version_info, step.response_nonce, step.HasField("error_detail")) == ("v1", "n4", False)
    # A new snapshot version in which our payload did not change: ACKed and held, not applied again.
    same = response("v9", "n6", [{"a": 1}])
    step = sub.on_response(same)
    assert isinstance(step, discovery_pb2.DiscoveryRequest) and not step.HasField("error_detail")
    assert (step.version_info, sub.applied_version) == ("v9", "v9")
    # A reconnect announces the version held.
    assert sub.initial_request().version_info == "v9"
    # Another type on the same ADS stream is not ours to answer.
    other = discovery_pb2.DiscoveryResponse(version_info="x", nonce="n5", type_url=EXT_AUTHZ_TYPE_URL)
    assert sub.on_response(other) is None


# ---- over real gRPC ---------------------------------------------------------------------------------------


class Recorder:
    """An apply function that keeps what it was given and refuses payloads with "refuse"."""

    def __init__(self) -> None:
        self.live: tuple[str, Mapping[str, Any]] | None = None
        self.calls = 0

    async def __call__(self, version: str, payload: Mapping[str, Any]) -> None:
        self.calls += 1
        if "refuse" in payload:
            raise ConfigRejected(f"cannot use {payload['refuse']}")
        if "crash" in payload:
            raise RuntimeError("boom")
        self.live = (version, payload)


@contextlib.asynccontextmanager
async def running(coro: Any) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_ack_then_nack_keeps_the_last_good() -> None:
    port = free_port()
    ads = ScriptedAds()
    server = await start_ads(port, ads)
    apply = Recorder()
    client = ServiceConfigClient(f"127.0.0.1:{port}", "gw/ext_proc", "outrider", TYPE, apply)
    try:
        async with running(client.run()):
            first = await ads.next_request()
            assert (first.node.id, first.node.cluster, first.type_url) == ("gw/ext_proc", "outrider", TYPE)
            assert (first.version_info, first.response_nonce) == ("", "")
            assert not client.first_applied.is_set() and client.version is None

            ads.push(TYPE, "v1", {"routes": ["a"]}, "n1")
            ack = await ads.next_request()
            assert (ack.version_info, ack.response_nonce, ack.HasField("error_detail")) == ("v1", "n1", False)
            assert client.first_applied.is_set() and client.version == "v1" and client.connected
            assert apply.live == ("v1", {"routes": ["a"]})

            ads.push(TYPE, "v2", {"refuse": "this"}, "n2")
            nack = await ads.next_request()
            assert (nack.version_info, nack.response_nonce) == ("v1", "n2")
            assert (nack.error_detail.code, nack.error_detail.message) == (INVALID_ARGUMENT, "cannot use this")
            assert client.version == "v1" and apply.live == ("v1", {"routes": ["a"]})

            ads.push(TYPE, "v3", {"crash": 1}, "n3")      # any exception NACKs, with its type
            nack = await ads.next_request()
            assert (nack.version_info, nack.error_detail.message) == ("v1", "RuntimeError: boom")

            ads.push(TYPE, "v4", None, "n4")               # no resource at all
            nack = await ads.next_request()
            assert (nack.version_info, nack.error_detail.message) == ("v1", "no resource")

            ads.push(TYPE, "v5", {"routes": ["a", "b"]}, "n5")
            ack = await ads.next_request()
            assert (ack.version_info, ack.response_nonce) == ("v5", "n5")
            assert apply.live == ("v5", {"routes": ["a", "b"]})
    finally:
        await server.stop(None)


async def test_reconnect_after_server_restart_resends_the_applied_version() -> None:
    port = free_port()
    ads = ScriptedAds()
    server = await start_ads(port, ads)
    apply = Recorder()
    client = ServiceConfigClient(f"127.0.0.1:{port}", "gw/ext_proc", "outrider", TYPE, apply,
                                 backoff_initial_s=0.05, backoff_max_s=0.2)
    async with running(client.run()):
        await ads.next_request()
        ads.push(TYPE, "v1", {"routes": ["a"]}, "n1")
        assert (await ads.next_request()).version_info == "v1"
        await server.stop(None)

        ads2 = ScriptedAds()
        server = await start_ads(port, ads2)
        try:
            hello = await ads2.next_request(wait_s=10)
            assert (hello.version_info, hello.response_nonce, hello.node.id) == ("v1", "", "gw/ext_proc")
            # The restarted server sends what it has, the same version: ACKed, not applied a second time.
            ads2.push(TYPE, "v1", {"routes": ["a"]}, "m1")
            ack = await ads2.next_request()
            assert (ack.version_info, ack.response_nonce) == ("v1", "m1")
            assert apply.calls == 1
            ads2.push(TYPE, "v2", {"routes": ["b"]}, "m2")
            assert (await ads2.next_request()).version_info == "v2"
            assert apply.live == ("v2", {"routes": ["b"]}) and apply.calls == 2
        finally:
            await server.stop(None)


# ---- health gating through the service runner -------------------------------------------------------------


class DummyPlugin:
    name = "dummy"
    type_url = TYPE

    def payload(self, config: Any) -> Mapping[str, Any]:
        return {"routes": [r.name for r in config.routes]}


class DummyRuntime:
    health_names = ("test.Dummy",)

    def __init__(self, _settings: StartupSettings) -> None:
        self.live: tuple[str, Mapping[str, Any]] | None = None
        self.closed = False

    def register(self, server: grpc.aio.Server) -> None:
        pass

    async def apply(self, version: str, payload: Mapping[str, Any]) -> None:
        if "refuse" in payload:
            raise ConfigRejected("refused")
        self.live = (version, payload)

    async def close(self) -> None:
        self.closed = True


async def health_of(stub: health_pb2_grpc.HealthStub, name: str) -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
    return int(reply.status)


async def test_health_not_serving_until_first_version_applied() -> None:
    ads_port, port = free_port(), free_port()
    ads = ScriptedAds()
    server = await start_ads(ads_port, ads)
    spec = ServiceSpec(DummyPlugin(), "dummy", DummyRuntime)
    settings = StartupSettings("dummy", "127.0.0.1", port, 0)
    source = XdsSource(spec, f"127.0.0.1:{ads_port}", "gw/dummy", "outrider")
    try:
        async with running(run_service(spec, settings, source)), grpc.aio.insecure_channel(
                f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await ads.next_request()   # subscribed: the port is bound by now or very soon
            for name in ("", "test.Dummy"):
                status = await _eventually(lambda n=name: health_of(stub, n))
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING

            ads.push(TYPE, "v1", {"refuse": 1}, "n1")      # a refused first version leaves it NOT_SERVING
            assert (await ads.next_request()).HasField("error_detail")
            assert await health_of(stub, "") == health_pb2.HealthCheckResponse.NOT_SERVING

            ads.push(TYPE, "v2", {"routes": ["a"]}, "n2")
            assert (await ads.next_request()).version_info == "v2"
            for name in ("", "test.Dummy"):
                await _until(lambda n=name: health_of(stub, n), health_pb2.HealthCheckResponse.SERVING)
    finally:
        await server.stop(None)


async def _eventually(check: Any, wait_s: float = 5.0) -> int:
    """The first answer of a check that may fail while the port is still coming up."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            return int(await check())
        except grpc.aio.AioRpcError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.02)


async def _until(check: Any, want: int, wait_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + wait_s
    while (got := await _eventually(check)) != want:
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"health stayed {got}, wanted {want}")
        await asyncio.sleep(0.02)
