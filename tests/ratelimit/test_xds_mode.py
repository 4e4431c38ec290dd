"""The rate limit service in control-plane mode (`--xds`) against a scripted ADS server: UNAVAILABLE (Envoy's
failure mode decides) and NOT_SERVING until a first version, a pushed limit applies at once with the store kept,
a version it cannot apply is NACKed with the reason and the last good limits stay."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outrider.config import load_config
from outrider.service_resource import RATELIMIT_TYPE_URL as TYPE
from ratelimit_service.app import SERVICE_NAME
from ratelimit_service.resource import payload
from tests.harness import example_config_dict, with_free_ports, write_config
from tests.kernel.ads_script import ScriptedAds, start_xds_service, until

EXTRA = "domain: extra\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5}\n"


def request(domain: str, *entries: tuple[str, str]) -> rls_pb2.RateLimitRequest:
    out = rls_pb2.RateLimitRequest(domain=domain)
    descriptor = out.descriptors.add()
    for key, value in entries:
        descriptor.entries.add(key=key, value=value)
    return out






async def test_ratelimit_applies_pushed_versions(ads: tuple[ScriptedAds, int], tmp_path: Path) -> None:
    servicer, ads_port = ads
    proc, port = start_xds_service("ratelimit_service", "ratelimit", ads_port, tmp_path)
    data = with_free_ports(example_config_dict())
    data["rate_limits"]["files"] = ["extra.yaml"]
    (tmp_path / "extra.yaml").write_text(EXTRA)
    v1 = payload(load_config(write_config(data, tmp_path / "gateway.yaml")))
    (tmp_path / "extra.yaml").unlink()  # the service reads no file: the payload carries it
    try:
        hello = await servicer.next_request(wait_s=30)
        assert (hello.node.id, hello.node.cluster, hello.type_url, hello.version_info) == (
            "gw/ratelimit", "outrider", TYPE, "")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health_stub = health_pb2_grpc.HealthStub(channel)
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)

            async def health(name: str = SERVICE_NAME) -> int:
                return int((await health_stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)).status)

            async def limit_of(domain: str, *entries: tuple[str, str]) -> int:
                response = await stub.ShouldRateLimit(request(domain, *entries), timeout=5)
                return int(response.statuses[0].current_limit.requests_per_unit)

            for name in ("", SERVICE_NAME):
                await until(functools.partial(health, name), health_pb2.HealthCheckResponse.NOT_SERVING)
            with pytest.raises(grpc.aio.AioRpcError) as early:
                await limit_of("extra", ("k", "v"))
            assert early.value.code() == grpc.StatusCode.UNAVAILABLE

            servicer.push(TYPE, "v1", v1, "n1")
            ack = await servicer.next_request()
            assert (ack.version_info, ack.response_nonce, ack.HasField("error_detail")) == ("v1", "n1", False)
            for name in ("", SERVICE_NAME):
                await until(functools.partial(health, name), health_pb2.HealthCheckResponse.SERVING)
            assert await limit_of("extra", ("k", "v")) == 5
            assert await limit_of("outrider", ("tier", "free"), ("user_id", "u")) == 60

            v2 = copy.deepcopy(v1)
            v2["files"][0]["config"]["descriptors"][0]["rate_limit"]["requests_per_unit"] = 7
            v2["rate_limits"]["tiers"]["free"][0]["requests_per_unit"] = 30
            servicer.push(TYPE, "v2", v2, "n2")
            assert (await servicer.next_request()).version_info == "v2"
            assert await limit_of("extra", ("k", "v")) == 7
            assert await limit_of("outrider", ("tier", "free"), ("user_id", "u")) == 30

            v3 = copy.deepcopy(v2)
            v3["files"][0]["config"]["descriptors"][0]["rate_limit"]["unit"] = "fortnight"
            servicer.push(TYPE, "v3", v3, "n3")
            nack = await servicer.next_request()
            assert (nack.version_info, nack.response_nonce) == ("v2", "n3")
            assert "extra.yaml: descriptors.0.rate_limit.unit" in nack.error_detail.message
            assert await limit_of("extra", ("k", "v")) == 7
            assert await health() == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.stop()
    assert proc.returncode == 0, (tmp_path / "ratelimit.log").read_text()[-3000:]
