"""One source of truth: a change through the control plane reaches Envoy and every service, or nobody.

Real Envoy, real services, each service an ADS client of the control plane (node `<gateway>/<service>`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from outrider.service_resource import EXT_PROC_TYPE_URL
from tests.conftest import start_stack
from tests.harness import Stack, example_config_dict
from tests.xds.conftest import xds_admin

GATEWAY = "outrider-gateway"
FLOW_ROUTE = {
    "match": {"prefix": "/api/v1/flow/"},
    "upstream": "demo",
    "resource": "profile",
    "transformations": {
        "request": {"json_body": {"moved": "$.original"}},
        "response": {"remove_json_fields": ["secret"]},
    },
    "validation": {"max_url_length": 64},
    # Authenticated responses are cached per caller only (vary_by Authorization), else never.
    "cache": {"rules": [{"path": "/api/v1/flow/cached/**", "ttl_s": 60, "vary_by": ["Authorization"]}]},
}


@pytest.fixture(scope="module")
def flow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("flow"), example_config_dict())
    yield running
    running.stop()


def _auth(stack: Stack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.token('flow', ('user',), 'premium')}"}


def _served_with_all_three(stack: Stack) -> None:
    """The route's JSON body transformation, response filter, validation and cache all apply."""
    auth = _auth(stack)
    posted = stack.request("POST", "/api/v1/flow/x", headers=auth, json={"original": 7, "secret": "s"})
    assert posted.status_code == 200, posted.text
    assert posted.json()["json"] == {"original": 7, "moved": 7}  # moved by the request rule; the echo's
    # copy of `secret` was removed from the response by the response rule
    assert stack.get("/api/v1/flow/" + "a" * 80, headers=auth).status_code == 414
    cached = [stack.get("/api/v1/flow/cached/1", headers=auth) for _ in range(2)]
    assert [c.headers.get("x-cache-status") for c in cached] == ["MISS", "HIT"]


def test_a_route_put_is_served_with_its_transformations_validation_and_cache(flow_stack: Stack) -> None:
    with xds_admin(flow_stack) as admin:
        started = time.monotonic()
        put = admin.put("/v1/routes/flow", json=FLOW_ROUTE)
        answered = time.monotonic() - started
        assert put.status_code == 200, put.text
        acked = set(put.json()["acked_by"])
        assert acked == {GATEWAY, *(f"{GATEWAY}/{s}" for s in ("ext_authz", "ratelimit", "ext_proc"))}, acked
        assert answered < 1.0
        # The change is live everywhere once the PUT answered: no waiting needed.
        _served_with_all_three(flow_stack)

        deleted = admin.delete("/v1/routes/flow")
        assert deleted.status_code == 200, deleted.text
        assert len(deleted.json()["acked_by"]) == 4
        assert flow_stack.get("/api/v1/flow/x", headers=_auth(flow_stack)).status_code == 404


def test_a_restarted_service_serves_the_current_version_before_it_is_ready(flow_stack: Stack) -> None:
    ext_proc = flow_stack.procs["ext_proc"]
    ext_proc.kill()
    with xds_admin(flow_stack) as admin:
        put = admin.put("/v1/routes/flow", json=FLOW_ROUTE)
        assert put.status_code == 200, put.text
        version = put.json()["version"]
        assert f"{GATEWAY}/ext_proc" not in put.json()["acked_by"]  # not connected: not waited for
        ext_proc.start().wait_ready(30)  # ready = gRPC health SERVING
        # Ready means it has the current version: the new route's plan works on the very first request.
        _served_with_all_three(flow_stack)
        status = admin.get("/v1/status").json()["nodes"][f"{GATEWAY}/ext_proc"]
        assert set(status["acked"].values()) == {version}
        admin.delete("/v1/routes/flow")


class RefusingService:
    """A peer registered as one of the gateway's services that NACKs every version but its first."""

    def __init__(self, target: str, node_id: str, type_url: str) -> None:
        self.target, self.node_id, self.type_url = target, node_id, type_url
        self.refused: list[str] = []
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> RefusingService:
        self._thread.start()
        assert self.connected.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _run(self) -> None:
        node = base_pb2.Node(id=self.node_id, cluster="outrider")
        requests: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        requests.put_nowait(discovery_pb2.DiscoveryRequest(node=node, type_url=self.type_url))

        async def outgoing() -> Any:
            while True:
                yield await requests.get()

        async with grpc.aio.insecure_channel(self.target) as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(outgoing())
            reader = asyncio.ensure_future(self._read(call, requests))
            await asyncio.to_thread(self._stop.wait)
            call.cancel()
            reader.cancel()

    async def _read(self, call: Any, requests: asyncio.Queue[discovery_pb2.DiscoveryRequest]) -> None:
        acked = ""
        async for response in call:
            if not acked or response.version_info == acked:  # its first version (again, after a rollback)
                acked = response.version_info
                requests.put_nowait(discovery_pb2.DiscoveryRequest(
                    type_url=self.type_url, version_info=acked, response_nonce=response.nonce))
                self.connected.set()
                continue
            self.refused.append(response.version_info)
            requests.put_nowait(discovery_pb2.DiscoveryRequest(
                type_url=self.type_url, version_info=acked, response_nonce=response.nonce,
                error_detail=status_pb2.Status(code=3, message="this test's service refuses every change")))


def test_a_change_one_service_refuses_is_rolled_back_everywhere(flow_stack: Stack) -> None:
    xds = flow_stack.data["services"]["xds"]
    target = f"127.0.0.1:{xds['port']}"
    with xds_admin(flow_stack) as admin:
        before = admin.get("/v1/routes").json()["version"]
        # A node id of the gateway's services (<gateway>/*): the gateway expects it, so its NACK counts.
        with RefusingService(target, f"{GATEWAY}/refusing", EXT_PROC_TYPE_URL) as refusing:
            put = admin.put("/v1/routes/flow", json=FLOW_ROUTE)
            assert put.status_code == 409, put.text
            body = put.json()
            assert body["version"] == before
            assert any(n["node"] == f"{GATEWAY}/refusing" and "refuses every change" in n["error"]
                       for n in body["nacks"]), body
            assert refusing.refused == [body["rejected_version"]]
        # Rolled back everywhere: Envoy has no such route, ext_proc is back on the previous version.
        assert flow_stack.get("/api/v1/flow/x", headers=_auth(flow_stack)).status_code == 404
        assert admin.get("/v1/routes").json()["version"] == before

        def ext_proc_back() -> bool:
            acked = admin.get("/v1/status").json()["nodes"][f"{GATEWAY}/ext_proc"]["acked"]
            return set(acked.values()) == {before}

        Stack.wait_until(ext_proc_back, what="ext_proc back on the previous version")


def test_an_unknown_node_can_neither_read_nor_veto(flow_stack: Stack, tmp_path: Path) -> None:
    xds = flow_stack.data["services"]["xds"]

    async def try_read() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{xds['port']}") as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(iter([
                discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="stranger", cluster="outrider"),
                                               type_url=EXT_PROC_TYPE_URL)]))
            try:
                await call.read()
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    assert asyncio.run(try_read()) == grpc.StatusCode.PERMISSION_DENIED
    with xds_admin(flow_stack) as admin:
        assert "stranger" not in admin.get("/v1/status").json()["nodes"]


def test_the_admin_api_refuses_a_caller_without_the_token(flow_stack: Stack) -> None:
    with xds_admin(flow_stack, token="x" * 32) as stranger:
        refused = stranger.put("/v1/routes/flow", json=FLOW_ROUTE)
        assert refused.status_code == 401
        assert stranger.get("/v1/routes").status_code == 401
    with xds_admin(flow_stack) as admin:
        assert "flow" not in {r["name"] for r in admin.get("/v1/routes").json()["routes"]}


def test_what_envoy_would_refuse_is_refused_before_any_push(flow_stack: Stack) -> None:
    bad = [
        ({"match": {"regex": "/x/(?=admin).*"}, "upstream": "demo", "public": True}, "match.regex"),
        ({"match": {"regex": "/x/[a-z]{1,500}"}, "upstream": "demo", "public": True}, "match.regex"),
        ({"match": {"path": "/x"}, "direct_response": {"body": "a\r\nSet-Cookie: s=1"}}, "direct_response.body"),
        ({"match": {"prefix": "/x/"}, "upstream": "demo", "public": True,
          "rewrite": {"host": "h\r\nX-Evil: 1"}}, "rewrite.host"),
    ]
    with xds_admin(flow_stack) as admin:
        before = admin.get("/v1/status").json()
        for body, field in bad:
            answer = admin.put("/v1/routes/bad", json=body)
            assert answer.status_code == 422, answer.text
            assert any(p["field"].endswith(field) for p in answer.json()["problems"]), answer.json()
        after = admin.get("/v1/status").json()
        assert after["version"] == before["version"]  # nothing pushed, so nothing for Envoy to NACK
        assert after["nodes"][GATEWAY]["last_nack"] == before["nodes"][GATEWAY]["last_nack"]
