"""mTLS on the ADS port: Envoy and the services connect with the gateway's certificate; a certificate may only
claim the node ids granted to its identity; no certificate, or one from another CA, gets no stream at all."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from outrider.service_resource import EXT_PROC_TYPE_URL
from tests.certs import Issued, TestCA
from tests.conftest import start_stack
from tests.harness import Stack, example_config_dict
from tests.xds.conftest import xds_admin

GATEWAY = "outrider-gateway"
GATEWAY_ID = "spiffe://outrider.test/gateway"
OTHER_ID = "spiffe://outrider.test/other-team"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued | TestCA]:
    directory = tmp_path_factory.mktemp("pki")
    ca = TestCA(directory)
    return {
        "ca": ca,
        "server": ca.issue("xds-server", dns=("localhost",), ips=("127.0.0.1",)),
        "gateway": ca.issue("gateway", uris=(GATEWAY_ID,)),
        "other": ca.issue("other", uris=(OTHER_ID,)),
        "stranger": TestCA(directory, "stranger CA").issue("stranger", uris=(GATEWAY_ID,)),
    }


@pytest.fixture(scope="module")
def mtls_stack(tmp_path_factory: pytest.TempPathFactory, pki: dict) -> Iterator[Stack]:  # type: ignore[type-arg]
    data = example_config_dict()
    data["services"]["xds"]["tls"] = {
        "cert_file": str(pki["server"].cert), "key_file": str(pki["server"].key),
        "client_ca_file": str(pki["ca"].cert),
        "identities": {GATEWAY_ID: [GATEWAY, f"{GATEWAY}/*"], OTHER_ID: ["other-gateway"]},
        "client_cert_file": str(pki["gateway"].cert), "client_key_file": str(pki["gateway"].key),
    }
    running = start_stack(tmp_path_factory.mktemp("mtls"), data)
    yield running
    running.stop()


def _open(stack: Stack, pki: dict, node_id: str, who: str | None) -> grpc.StatusCode:  # type: ignore[type-arg]
    """Open an ADS stream as node_id with `who`'s certificate (None: no client certificate)."""
    port = stack.data["services"]["xds"]["port"]
    ca = pki["ca"].cert.read_bytes()
    if who is None:
        credentials = grpc.ssl_channel_credentials(ca)
    else:
        credentials = grpc.ssl_channel_credentials(ca, pki[who].key.read_bytes(), pki[who].cert.read_bytes())

    async def attempt() -> grpc.StatusCode:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials,
                                           options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(iter([
                discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id, cluster="outrider"),
                                               type_url=EXT_PROC_TYPE_URL)]))
            try:
                await asyncio.wait_for(call.read(), 10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            call.cancel()
            return grpc.StatusCode.OK

    return asyncio.run(attempt())


def test_the_gateway_runs_over_mtls_and_every_node_acks(mtls_stack: Stack) -> None:
    assert mtls_stack.get("/api/v1/public/x").status_code == 200
    with xds_admin(mtls_stack) as admin:
        put = admin.put("/v1/routes/mtls", json={"match": {"prefix": "/mtls/"}, "upstream": "demo", "public": True})
        assert put.status_code == 200, put.text
        assert set(put.json()["acked_by"]) == {GATEWAY, *(f"{GATEWAY}/{s}" for s in ("ext_authz", "ratelimit",
                                                                                   "ext_proc"))}
    assert mtls_stack.get("/mtls/x").status_code == 200


def test_a_certificate_claims_only_the_node_ids_granted_to_it(mtls_stack: Stack, pki: dict) -> None:  # type: ignore[type-arg]
    assert _open(mtls_stack, pki, f"{GATEWAY}/ext_proc", "gateway") == grpc.StatusCode.OK
    # Another team's certificate is valid (same CA) but may not pose as this gateway or its services.
    assert _open(mtls_stack, pki, GATEWAY, "other") == grpc.StatusCode.PERMISSION_DENIED
    assert _open(mtls_stack, pki, f"{GATEWAY}/ext_authz", "other") == grpc.StatusCode.PERMISSION_DENIED


def test_no_certificate_or_a_foreign_one_gets_no_stream(mtls_stack: Stack, pki: dict) -> None:  # type: ignore[type-arg]
    assert _open(mtls_stack, pki, GATEWAY, None) == grpc.StatusCode.UNAVAILABLE
    assert _open(mtls_stack, pki, GATEWAY, "stranger") == grpc.StatusCode.UNAVAILABLE


def _served_certificate(stack: Stack, pki: dict) -> bytes:  # type: ignore[type-arg]
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(pki["ca"].cert))
    context.load_cert_chain(str(pki["gateway"].cert), str(pki["gateway"].key))
    context.set_alpn_protocols(["h2"])
    port = stack.data["services"]["xds"]["port"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_rotated_server_certificate_files_are_served_without_a_restart(mtls_stack: Stack, pki: dict) -> None:  # type: ignore[type-arg]
    import ssl

    before = _served_certificate(mtls_stack, pki)
    assert before == ssl.PEM_cert_to_DER_cert(pki["server"].cert.read_text())
    rotated = pki["ca"].issue("xds-server", dns=("localhost",), ips=("127.0.0.1",))  # same files, new certificate
    assert rotated.cert == pki["server"].cert
    expected = ssl.PEM_cert_to_DER_cert(rotated.cert.read_text())
    Stack.wait_until(lambda: _served_certificate(mtls_stack, pki) == expected, 10, "the rotated certificate")
    assert _open(mtls_stack, pki, f"{GATEWAY}/ext_proc", "gateway") == grpc.StatusCode.OK
