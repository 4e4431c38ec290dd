"""JWKS through a real Envoy: new keys work without a restart, removed keys stop working, and the gateway is
not ready until the keys are there."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from outrider.config import load_config
from outrider.devtoken import mint_token
from outrider.process import grpc_serving
from outrider.supervisor import plan_processes
from tests.conftest import start_stack
from tests.harness import KEYS_DIR, ROOT, Stack, example_config_dict, with_free_ports, write_config
from tests.jwks_endpoint import JwksEndpoint

PROFILE = "/api/v1/users/profile"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk_of(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return jwk


def pem_of(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def token_for(stack: Stack, key: rsa.RSAPrivateKey, kid: str) -> str:
    provider = stack.data["auth"]["providers"][0]
    return mint_token(pem_of(key), subject="alice", roles=["user"], tier="free", issuer=provider["issuer"],
                      audience=provider["audiences"][0], kid=kid, ttl_s=600)


def status(stack: Stack, token: str) -> int:
    return stack.get(PROFILE, headers={"authorization": f"Bearer {token}"}).status_code


def test_jwks_file_rotation(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk_of(old, "old")]}))
    data = example_config_dict()
    data["auth"]["providers"][0]["jwks_file"] = str(jwks)
    stack = start_stack(tmp_path, data)
    try:
        old_token, new_token = token_for(stack, old, "old"), token_for(stack, new, "new")
        assert status(stack, old_token) == 200
        assert status(stack, new_token) == 401

        jwks.write_text(json.dumps({"keys": [jwk_of(new, "new")]}))  # rotate: new key in, old key out
        stack.wait_until(lambda: status(stack, new_token) == 200, what="the new key to be accepted")
        # The old token was cached as valid; removing its key must end that.
        assert status(stack, old_token) == 401
    finally:
        stack.stop()


@pytest.fixture
def jwks_server() -> Iterator[JwksEndpoint]:
    dev = json.loads((KEYS_DIR / "jwks.json").read_text())
    server = JwksEndpoint({"keys": dev["keys"]})
    yield server
    server.close()


def url_config(jwks_server: JwksEndpoint, **provider_settings: Any) -> dict[str, Any]:
    data = example_config_dict()
    provider = data["auth"]["providers"][0]
    provider.pop("jwks_file")
    # The test server speaks plain http: allowed only with allow_insecure (development only).
    provider.update({"jwks_url": jwks_server.url, "allow_insecure": True, **provider_settings})
    return data


def test_jwks_url_unknown_kid_triggers_refresh(tmp_path: Path, jwks_server: JwksEndpoint) -> None:
    data = url_config(jwks_server, jwks_refresh_s=3600, jwks_cooldown_s=1)
    stack = start_stack(tmp_path, data)
    try:
        assert status(stack, stack.token()) == 200
        fetches_at_start = jwks_server.fetches
        key = new_key()
        jwks_server.document = {"keys": [*jwks_server.document["keys"], jwk_of(key, "added")]}
        new_token = token_for(stack, key, "added")
        # The first sight of an unknown kid refreshes in the background (not on the request path).
        stack.wait_until(lambda: status(stack, new_token) == 200, what="the added key to be fetched")
        assert jwks_server.fetches > fetches_at_start
        # A flood of unknown kids does not become a flood of fetches: at most one per cooldown (1 s) of the
        # flood's duration, plus the one a refresh already under way may add — bounded by the clock, not a sleep.
        before = jwks_server.fetches
        bogus = token_for(stack, new_key(), "bogus")
        started = time.monotonic()
        for _ in range(30):
            assert status(stack, bogus) == 401
        elapsed = time.monotonic() - started
        assert jwks_server.fetches - before <= int(elapsed / 1.0) + 2
    finally:
        stack.stop()


def test_not_ready_until_the_jwks_url_answers(tmp_path: Path, jwks_server: JwksEndpoint) -> None:
    # Envoy's jwt_authn activates its listener only after the initial JWKS fetch (RemoteJwks.async_fetch);
    # here ext_authz says NOT_SERVING on gRPC health until every provider has keys, so Envoy's
    # /health/ready (and `outrider run`, which waits for the service's health) stays red meanwhile.
    jwks_server.status = 503
    data = with_free_ports(url_config(jwks_server, jwks_refresh_s=3600))
    config_path = write_config(data, tmp_path / "gateway.yaml")
    stack = Stack(config_path, data, tmp_path)
    try:
        for proc in plan_processes(load_config(config_path), config_path, tmp_path, log_dir=tmp_path):
            proc.cwd = ROOT
            stack.procs[proc.name] = proc.start()
            if proc.name != "ext_authz":
                proc.wait_ready(30)
        # ext_authz has tried (and is retrying) the JWKS URL; Envoy is up but the gateway is not ready.
        jwks_server.wait_fetches(2)
        assert not grpc_serving("127.0.0.1", data["services"]["ext_authz"]["port"])()
        assert stack.get("/health/ready").status_code == 503
        assert status(stack, stack.token()) != 200

        jwks_server.status = 200
        stack.procs["ext_authz"].wait_ready(30)
        stack.wait_until(lambda: stack.get("/health/ready").status_code == 200, 30, "/health/ready")
        assert status(stack, stack.token()) == 200
    finally:
        stack.stop()
