"""Readiness waits for keys: a provider whose JWKS URL has not answered keeps the runtime (and so gRPC health)
not ready; once ready, a version whose new provider gets no keys is refused; a version that keeps a provider's
URL starts from its last good keys, even while that URL is down."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_authz.app import SPEC, AuthzRuntime
from ext_authz.resource import build_policy, payload
from outrider.config import GatewayConfig, load_config
from outrider.process import free_port
from outrider.service_main import StartupSettings, all_set, cancel_tasks, run_service
from outrider.xds_client import ConfigRejected
from tests.harness import KEYS_DIR, example_config_dict, with_free_ports, write_config


@dataclass
class Jwks:
    url: str
    status: int = 503
    hits: int = 0
    hit: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_hits(self, count: int) -> None:
        async with asyncio.timeout(15), self.hit:
            await self.hit.wait_for(lambda: self.hits >= count)


@pytest.fixture
async def jwks() -> AsyncIterator[Jwks]:
    server = Jwks(url="")
    document = (KEYS_DIR / "jwks.json").read_bytes()

    async def handler(_request: web.Request) -> web.Response:
        server.hits += 1
        async with server.hit:
            server.hit.notify_all()
        if server.status != 200:
            return web.Response(status=server.status, text="starting")
        return web.Response(body=document, content_type="application/json")

    app = web.Application()
    app.router.add_get("/jwks.json", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/jwks.json"
    yield server
    await runner.cleanup()


def url_config(tmp_path: Path, url: str, second_url: str | None = None) -> GatewayConfig:
    data = with_free_ports(example_config_dict())
    provider = data["auth"]["providers"][0]
    provider.pop("jwks_file")
    provider.update({"jwks_url": url, "allow_insecure": True})
    if second_url is not None:
        data["auth"]["providers"].append({"name": "second", "issuer": "https://second.example", "jwks_url": second_url,
                                          "allow_insecure": True})
    return load_config(write_config(data, tmp_path / "gateway.yaml"))


async def test_policy_is_ready_only_once_every_provider_has_keys(jwks: Jwks, tmp_path: Path) -> None:
    policy = await build_policy(payload(url_config(tmp_path, jwks.url)))
    try:
        assert not policy.keys.ready.is_set()
        assert policy.keys.missing == ["dev"]
        jwks.status = 200
        source = policy.keys.sources["dev"]
        source.request_refresh()  # the background loop retries on its own too; this only hurries it
        async with asyncio.timeout(10):
            await policy.keys.ready.wait()
        assert policy.keys.missing == []
    finally:
        await cancel_tasks(policy.tasks)


async def test_file_and_hs256_providers_are_ready_at_once(tmp_path: Path) -> None:
    config = load_config(write_config(with_free_ports(example_config_dict()), tmp_path / "gateway.yaml"))
    policy = await build_policy(payload(config))
    try:
        assert policy.keys.ready.is_set()
    finally:
        await cancel_tasks(policy.tasks)


async def test_runtime_ready_follows_keys_and_refuses_a_keyless_new_provider(jwks: Jwks, tmp_path: Path) -> None:
    runtime = AuthzRuntime()
    try:
        v1 = payload(url_config(tmp_path, jwks.url))
        await runtime.apply("v1", v1)  # accepted: the first version, its keys still loading
        assert runtime.version == "v1" and not runtime.ready.is_set()
        jwks.status = 200
        assert runtime.policy is not None
        runtime.policy.keys.request_refresh("dev")
        async with asyncio.timeout(10):
            await runtime.ready.wait()

        # Ready now: a version adding a provider whose URL gives no keys is refused, v1 stays live.
        dead = f"http://127.0.0.1:{free_port()}/jwks.json"
        v2 = payload(url_config(tmp_path, jwks.url, second_url=dead))
        with pytest.raises(ConfigRejected, match=r"no signing keys could be loaded for provider.*second"):
            await runtime.apply("v2", v2)
        assert runtime.version == "v1"

        # The JWKS host goes down: a version keeping the same URL starts from the last good keys.
        jwks.status = 503
        v3 = copy.deepcopy(v1)
        v3["rbac"]["roles"]["user"][0]["actions"] = ["read"]
        await runtime.apply("v3", v3)
        assert runtime.version == "v3" and runtime.policy is not None and runtime.policy.keys.ready.is_set()
    finally:
        await runtime.close()


async def test_all_set_waits_for_every_event() -> None:
    tasks: list[asyncio.Task[None]] = []
    first, second = asyncio.Event(), asyncio.Event()
    assert all_set([first], tasks) is first and tasks == []
    combined = all_set([first, second], tasks)
    second.set()
    await asyncio.sleep(0)
    assert not combined.is_set()
    first.set()
    async with asyncio.timeout(1):
        await combined.wait()
    await cancel_tasks(tasks)


class FileSourceStub:
    """A config source that applies one payload at start (what standalone mode does)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        self.ready = asyncio.Event()

    async def start(self, apply: Any) -> None:
        await apply("v1", self._data)
        self.ready.set()

    async def run(self) -> None:
        await asyncio.Event().wait()


async def health(port: int) -> int:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return int(reply.status)


async def until_health(port: int, want: int) -> None:
    import grpc

    async with asyncio.timeout(15):
        while True:
            try:
                if await health(port) == want:
                    return
            except grpc.aio.AioRpcError:
                pass  # not bound yet
            await asyncio.sleep(0.05)


async def test_grpc_health_waits_for_keys(jwks: Jwks, tmp_path: Path) -> None:
    # The kernel's runner gates health on the first version AND the runtime's own `ready`.
    port = free_port()
    settings = StartupSettings("ext_authz", "127.0.0.1", port, 0)
    source = FileSourceStub(payload(url_config(tmp_path, jwks.url)))
    task = asyncio.create_task(run_service(SPEC, settings, source))
    try:
        await until_health(port, health_pb2.HealthCheckResponse.NOT_SERVING)
        await jwks.wait_hits(jwks.hits + 2)  # the service keeps retrying (and stays NOT_SERVING meanwhile)
        assert source.ready.is_set()
        assert await health(port) == health_pb2.HealthCheckResponse.NOT_SERVING
        jwks.status = 200
        await until_health(port, health_pb2.HealthCheckResponse.SERVING)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
