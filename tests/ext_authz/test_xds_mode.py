"""ext_authz in control-plane mode (`--xds`) against a scripted ADS server: fail closed and NOT_SERVING until a
first version, a pushed version's new route rule and role decide at once, a version it cannot apply is NACKed
with the reason and the last good one stays."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_authz.app import SERVICE_NAME
from ext_authz.resource import payload
from outrider.config import GatewayConfig, load_config
from outrider.devtoken import mint_dev_token
from outrider.service_resource import EXT_AUTHZ_TYPE_URL as TYPE
from tests.harness import KEYS_DIR, example_config_dict, with_free_ports, write_config
from tests.kernel.ads_script import ScriptedAds, start_xds_service, until

ITEM = "/api/v2/items/42"
NEW_ROUTE = {"name": "items", "match": {"regex": "/api/v2/items/[0-9]+"}, "upstream": "demo", "resource": "items"}


def check_request(method: str, path: str, token: str | None) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.id = method, path, "1"
    if token is not None:
        http.headers["authorization"] = f"Bearer {token}"
    return request






def config_of(data: dict[str, Any], tmp_path: Path) -> GatewayConfig:
    return load_config(write_config(data, tmp_path / "gateway.yaml"))


async def test_ext_authz_decides_with_pushed_versions(ads: tuple[ScriptedAds, int], tmp_path: Path) -> None:
    servicer, ads_port = ads
    proc, port = start_xds_service("ext_authz", "ext_authz", ads_port, tmp_path)
    v1_data = with_free_ports(example_config_dict())
    v1 = config_of(v1_data, tmp_path)
    provider = v1.auth.providers[0]
    token = mint_dev_token(KEYS_DIR, provider.issuer, provider.audiences[0], subject="alice", roles=["user"],
                           tier="free")
    try:
        hello = await servicer.next_request(wait_s=30)
        assert (hello.node.id, hello.node.cluster, hello.type_url, hello.version_info) == (
            "gw/ext_authz", "outrider", TYPE, "")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health_stub = health_pb2_grpc.HealthStub(channel)
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)

            async def health(name: str = SERVICE_NAME) -> int:
                return int((await health_stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)).status)

            async def decide(method: str, path: str) -> int:
                response = await stub.Check(check_request(method, path, token), timeout=5)
                return int(response.status.code)

            for name in ("", SERVICE_NAME):
                await until(functools.partial(health, name), health_pb2.HealthCheckResponse.NOT_SERVING)
            # No policy yet: even a public path is refused (fail closed), never guessed.
            assert await decide("GET", "/api/v1/public/x") == code_pb2.PERMISSION_DENIED

            servicer.push(TYPE, "v1", payload(v1), "n1")
            ack = await servicer.next_request()
            assert (ack.version_info, ack.response_nonce, ack.HasField("error_detail")) == ("v1", "n1", False)
            for name in ("", SERVICE_NAME):
                await until(functools.partial(health, name), health_pb2.HealthCheckResponse.SERVING)
            assert await decide("GET", "/api/v1/users/profile") == code_pb2.OK
            assert await decide("GET", ITEM) == code_pb2.PERMISSION_DENIED  # no rule covers it in v1

            # v2: a new route rule and a role grant for its resource decide the next Check.
            v2_data = copy.deepcopy(v1_data)
            v2_data["routes"].insert(1, copy.deepcopy(NEW_ROUTE))
            v2_data["rbac"]["roles"]["user"].append({"resource": "items", "actions": ["read"]})
            v2 = payload(config_of(v2_data, tmp_path))
            servicer.push(TYPE, "v2", v2, "n2")
            ack = await servicer.next_request()
            assert (ack.version_info, ack.HasField("error_detail")) == ("v2", False)
            assert await decide("GET", ITEM) == code_pb2.OK
            assert await decide("DELETE", ITEM) == code_pb2.PERMISSION_DENIED

            # v3: a key file that cannot be loaded is NACKed with the reason; v2 stays live.
            v3 = copy.deepcopy(v2)
            v3["auth"]["providers"][0]["jwks_file"] = str(tmp_path / "missing-jwks.json")
            servicer.push(TYPE, "v3", v3, "n3")
            nack = await servicer.next_request()
            assert (nack.version_info, nack.response_nonce) == ("v2", "n3")
            assert "missing-jwks.json" in nack.error_detail.message
            assert "cannot read JWKS file" in nack.error_detail.message

            # v4: a payload the models refuse is NACKed naming the field; v2 still decides.
            v4 = copy.deepcopy(v2)
            v4["rbac"]["roles"]["user"][0]["actions"] = ["fly"]
            servicer.push(TYPE, "v4", v4, "n4")
            nack = await servicer.next_request()
            assert (nack.version_info, nack.response_nonce) == ("v2", "n4")
            assert "invalid ext_authz payload: rbac.roles.user.0.actions.0" in nack.error_detail.message
            assert await decide("GET", ITEM) == code_pb2.OK
            assert await health() == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.stop()
    assert proc.returncode == 0, (tmp_path / "ext_authz.log").read_text()[-3000:]
