"""JWKS parsing, the refresh cooldown, and the file and URL key sources against real files and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ext_authz.jwks import (
    JwksError,
    KeySet,
    RefreshGate,
    b64url_decode_strict,
    backoff_delay,
    parse_jwks,
)
from ext_authz.jwks_sources import JwksFileSource, JwksUrlSource
from tests.ext_authz.conftest import KeyRing, b64url, public_jwk

# --- parsing ---------------------------------------------------------------------------------------


def test_parses_rsa_ec_and_okp_keys(keys: KeyRing) -> None:
    ks = parse_jwks(
        {
            "keys": [
                public_jwk(keys.rsa, "r", use="sig"),
                public_jwk(keys.ec256, "e256"),
                public_jwk(keys.ec384, "e384"),
                public_jwk(keys.ed25519, "ed"),
            ]
        }
    )
    assert set(ks.keys) == {"r", "e256", "e384", "ed"}
    r, e256, e384, ed = (ks.keys[k] for k in ("r", "e256", "e384", "ed"))
    assert isinstance(r.key, rsa.RSAPublicKey)
    assert r.key.public_numbers() == keys.rsa.public_key().public_numbers()
    assert r.algorithms == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert isinstance(e256.key, ec.EllipticCurvePublicKey)
    assert e256.key.public_numbers() == keys.ec256.public_key().public_numbers()
    assert e256.algorithms == {"ES256"}
    assert e384.algorithms == {"ES384"}
    assert isinstance(ed.key, ed25519.Ed25519PublicKey)
    assert ed.algorithms == {"EdDSA"}
    assert (r.kty, e256.kty, ed.kty) == ("RSA", "EC", "OKP")
    assert ks.skipped == ()


def test_declared_alg_narrows_the_key(keys: KeyRing) -> None:
    ks = parse_jwks({"keys": [public_jwk(keys.rsa, "r", alg="PS256")]})
    assert ks.keys["r"].algorithms == {"PS256"}


def test_key_without_kid_is_stored_under_none(keys: KeyRing) -> None:
    ks = parse_jwks({"keys": [public_jwk(keys.ed25519, None)]})
    assert list(ks.keys) == [None]


def test_private_members_are_never_used(keys: KeyRing) -> None:
    from jwt.algorithms import RSAAlgorithm

    private_jwk = RSAAlgorithm.to_jwk(keys.rsa, as_dict=True)
    private_jwk.pop("key_ops", None)  # PyJWT marks it ["sign"], which we would (rightly) skip
    assert "d" in private_jwk
    ks = parse_jwks({"keys": [{**private_jwk, "kid": "r"}]})
    assert isinstance(ks.keys["r"].key, rsa.RSAPublicKey)


def test_same_input_as_text_bytes_and_mapping(keys: KeyRing) -> None:
    doc = {"keys": [public_jwk(keys.rsa, "r")]}
    text = json.dumps(doc)
    assert parse_jwks(doc) == parse_jwks(text) == parse_jwks(text.encode())


def test_keyset_is_immutable(keys: KeyRing) -> None:
    ks = parse_jwks({"keys": [public_jwk(keys.rsa, "r")]})
    with pytest.raises(TypeError):
        ks.keys["evil"] = ks.keys["r"]  # type: ignore[index]


@dataclass(frozen=True)
class SkipCase:
    id: str
    entry: Callable[[KeyRing], Any]
    message: str  # must appear in the skip reason: it names the index and the field


def _small_rsa() -> dict[str, Any]:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return public_jwk(weak, "small")


def _secp256k1() -> dict[str, Any]:
    return {**public_jwk(ec.generate_private_key(ec.SECP256R1()), "k1"), "crv": "secp256k1"}


SKIPS = [
    SkipCase("use-enc", lambda k: public_jwk(k.rsa, "x", use="enc"), "keys[1]: 'use'='enc'"),
    SkipCase("key-ops-sign-only", lambda k: public_jwk(k.rsa, "x", key_ops=["sign"]), "keys[1]: 'key_ops'"),
    SkipCase("kty-oct", lambda k: {"kty": "oct", "k": b64url(b"s" * 32), "kid": "x"},
             "keys[1]: unsupported 'kty'='oct'"),
    SkipCase("kty-missing", lambda k: {"kid": "x"}, "keys[1]: unsupported 'kty'=None"),
    SkipCase("not-an-object", lambda k: "RSA", "keys[1]: not a JSON object"),
    SkipCase("kid-int", lambda k: {**public_jwk(k.rsa, None), "kid": 5}, "keys[1]: 'kid' is not a string"),
    SkipCase("rsa-missing-n", lambda k: {**public_jwk(k.rsa, "x"), "n": None}, "keys[1]: 'n' missing"),
    SkipCase("rsa-bad-base64-e", lambda k: {**public_jwk(k.rsa, "x"), "e": "AQ=="},
             "keys[1]: 'e' is not base64url"),
    SkipCase("rsa-1024-bits", lambda k: _small_rsa(), "keys[1]: RSA key is 1024 bits"),
    SkipCase("ec-secp256k1", lambda k: _secp256k1(), "keys[1]: unsupported EC curve 'crv'='secp256k1'"),
    SkipCase("ec-missing-y", lambda k: {**public_jwk(k.ec256, "x"), "y": ""}, "keys[1]: 'y' missing"),
    SkipCase("ec-wrong-length", lambda k: {**public_jwk(k.ec256, "x"), "crv": "P-384"},
             "keys[1]: EC 'x'/'y' must be 48"),
    SkipCase("ec-point-off-curve", lambda k: {**public_jwk(k.ec256, "x"), "y": b64url(b"\x01" * 32)},
             "keys[1]: invalid EC point"),
    SkipCase("okp-ed448", lambda k: {**public_jwk(k.ed25519, "x"), "crv": "Ed448"},
             "keys[1]: unsupported OKP curve"),
    SkipCase("okp-short-x", lambda k: {**public_jwk(k.ed25519, "x"), "x": b64url(b"\x01" * 31)},
             "keys[1]: Ed25519 'x' must be 32 bytes"),
    SkipCase("alg-incompatible", lambda k: public_jwk(k.rsa, "x", alg="ES256"), "keys[1]: 'alg'='ES256'"),
    SkipCase("alg-unsupported", lambda k: public_jwk(k.rsa, "x", alg="RSA-OAEP"),
             "keys[1]: 'alg'='RSA-OAEP'"),
]


@pytest.mark.parametrize("case", SKIPS, ids=[c.id for c in SKIPS])
def test_one_odd_key_is_skipped_not_fatal(keys: KeyRing, case: SkipCase) -> None:
    good = public_jwk(keys.rsa, "good")
    ks = parse_jwks({"keys": [good, case.entry(keys)]})
    assert list(ks.keys) == ["good"]
    assert len(ks.skipped) == 1
    assert case.message in ks.skipped[0]
    # ...and the same entry alone is a set with no usable key, which is an error naming it.
    with pytest.raises(JwksError, match="no usable signing key") as info:
        parse_jwks({"keys": [good, case.entry(keys)][1:]})
    assert case.message.replace("keys[1]", "keys[0]") in str(info.value)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"nokeys": []}, "'keys' is missing or not a list"),
        ({"keys": {"kty": "RSA"}}, "'keys' is missing or not a list"),
        ({"keys": []}, "'keys' is empty"),
        (b"[" * 100_000, "not valid JSON"),
    ],
    ids=["invalid-json", "not-utf8", "json-list", "no-keys", "keys-not-list", "keys-empty", "deep-nesting"],
)
def test_bad_documents_raise_jwks_error(document: Any, message: str) -> None:
    with pytest.raises(JwksError, match=message):
        parse_jwks(document)


def test_fingerprint_changes_iff_keys_change(keys: KeyRing) -> None:
    a, b = public_jwk(keys.rsa, "a"), public_jwk(keys.ec256, "b")
    base = parse_jwks({"keys": [a, b]}).fingerprint
    assert parse_jwks({"keys": [b, a]}).fingerprint == base  # order does not matter
    assert parse_jwks(json.dumps({"keys": [a, b]}, indent=4)).fingerprint == base  # formatting neither
    assert parse_jwks({"keys": [a, b, {"kty": "oct"}]}).fingerprint == base  # nor skipped junk
    changed = [
        {"keys": [a]},
        {"keys": [a, b, public_jwk(keys.ed25519, "c")]},
        {"keys": [{**a, "kid": "a2"}, b]},
        {"keys": [public_jwk(keys.rsa2, "a"), b]},
        {"keys": [{**a, "alg": "RS256"}, b]},
    ]
    prints = {parse_jwks(doc).fingerprint for doc in changed}
    assert base not in prints
    assert len(prints) == len(changed)


@pytest.mark.parametrize("bad", ["QQ==", "QR", "Q", "a+b/", "a b", "QUJD\n"])
def test_strict_base64url_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode_strict(bad)


def test_strict_base64url_accepts() -> None:
    assert b64url_decode_strict("") == b""
    assert b64url_decode_strict("QQ") == b"A"
    assert b64url_decode_strict("-_8") == b"\xfb\xff"


# --- cooldown and backoff ----------------------------------------------------------------------------


def test_refresh_gate_allows_once_per_cooldown() -> None:
    gate = RefreshGate(30.0)
    assert [gate.should_fetch(t) for t in (0.0, 1.0, 29.9, 30.0, 30.1, 59.9, 60.0)] == [
        True, False, False, True, False, False, True
    ]
    gate.record(100.0)  # a scheduled fetch counts too
    assert not gate.should_fetch(110.0)
    assert gate.should_fetch(130.0)


def test_refresh_gate_zero_cooldown_and_validation() -> None:
    gate = RefreshGate(0.0)
    assert all(gate.should_fetch(1.0) for _ in range(3))
    with pytest.raises(ValueError):
        RefreshGate(-1.0)


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_delay(n, 1.0, 10.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_delay(10_000, 1.0, 300.0) == 300.0


# --- helpers for the sources -------------------------------------------------------------------------


@dataclass
class Collected:
    keysets: list[KeySet] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, keys: KeySet) -> None:
        self.keysets.append(keys)
        self.event.set()

    async def next(self) -> KeySet:
        await asyncio.wait_for(self.event.wait(), 5.0)
        self.event.clear()
        return self.keysets[-1]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def url_source(url: str, on_keys: Callable[[KeySet], None], **kwargs: Any) -> JwksUrlSource:
    """A source on the local test server, which speaks plain HTTP (allowed only with allow_insecure)."""
    return JwksUrlSource(url, on_keys, allow_insecure=True, **kwargs)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Any], asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []

    def start(coro: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    for task in tasks:
        with pytest.raises(asyncio.CancelledError):
            await task


# --- file source ------------------------------------------------------------------------------------


def write_jwks(path: Path, *jwks: dict[str, Any]) -> None:
    path.write_text(json.dumps({"keys": list(jwks)}))


async def test_file_source_loads_and_detects_rewrite(
    tmp_path: Path, keys: KeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwk(keys.rsa, "one"))
    got = Collected()
    source = JwksFileSource(path, got)
    first = source.load_now()
    assert list(first.keys) == ["one"]
    assert got.keysets == [first]

    assert source.poll_once() is False  # unchanged file
    write_jwks(path, public_jwk(keys.rsa2, "two"))
    assert source.poll_once() is True
    assert list(got.keysets[-1].keys) == ["two"]

    # A corrupt rewrite (e.g. half-written) keeps the last good keys and warns once.
    path.write_text('{"keys": [')
    with caplog.at_level(logging.WARNING, logger="ext_authz.jwks_sources"):
        assert source.poll_once() is False
        assert source.poll_once() is False
    assert source.current is not None and list(source.current.keys) == ["two"]
    assert len(got.keysets) == 2
    assert len([r for r in caplog.records if "keeping last good keys" in r.getMessage()]) == 1

    # A deleted file too.
    path.unlink()
    assert source.poll_once() is False
    assert source.current is not None and list(source.current.keys) == ["two"]

    write_jwks(path, public_jwk(keys.ec256, "three"))
    assert source.poll_once() is True
    assert list(got.keysets[-1].keys) == ["three"]


async def test_file_source_same_keys_reformatted_is_not_a_change(tmp_path: Path, keys: KeyRing) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwk(keys.rsa, "one"))
    got = Collected()
    source = JwksFileSource(path, got)
    source.load_now()
    path.write_text(json.dumps({"keys": [public_jwk(keys.rsa, "one")]}, indent=2))
    assert source.poll_once() is False
    assert len(got.keysets) == 1


@pytest.mark.parametrize("content", [None, "{}", "not json"], ids=["missing", "no-keys", "not-json"])
def test_file_source_first_load_errors_name_the_file(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "jwks.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(JwksError, match=r"jwks\.json"):
        JwksFileSource(path, Collected()).load_now()


async def test_file_source_run_polls(tmp_path: Path, keys: KeyRing, running: Any) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwk(keys.rsa, "one"))
    got = Collected()
    source = JwksFileSource(path, got, poll_interval_s=0.05)
    source.load_now()
    await got.next()
    running(source.run())
    write_jwks(path, public_jwk(keys.rsa2, "two"))
    assert list((await got.next()).keys) == ["two"]


async def test_file_source_request_refresh_respects_cooldown(
    tmp_path: Path, keys: KeyRing, running: Any
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwk(keys.rsa, "one"))
    got = Collected()
    clock = FakeClock()
    # Polling is effectively off, so only request_refresh can trigger a read.
    source = JwksFileSource(path, got, poll_interval_s=3600, cooldown_s=5.0, clock=clock)
    source.load_now()
    await got.next()
    running(source.run())
    write_jwks(path, public_jwk(keys.rsa2, "two"))
    clock.now = 4.0
    assert source.request_refresh() is False  # within cooldown of the initial load: the poller is not woken
    assert len(got.keysets) == 1
    clock.now = 5.0
    assert source.request_refresh() is True
    assert list((await got.next()).keys) == ["two"]


# --- URL source against a real local HTTP server -----------------------------------------------------


@dataclass
class JwksServer:
    url: str
    body: bytes = b""
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False  # answer with the body in chunks (no Content-Length)
    hits: int = 0
    hit: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_hits(self, at_least: int) -> None:
        async with asyncio.timeout(5.0), self.hit:
            await self.hit.wait_for(lambda: self.hits >= at_least)

    def set_keys(self, *jwks: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(jwks)}).encode()


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer(url="")

    async def handler(request: web.Request) -> web.StreamResponse:
        server.hits += 1
        async with server.hit:
            server.hit.notify_all()
        if server.delay_s:
            await asyncio.sleep(server.delay_s)  # a slow server (the client's timeout is under test)
        if server.stream:
            streamed = web.StreamResponse(status=server.status, headers=server.headers)
            streamed.enable_chunked_encoding()
            await streamed.prepare(request)
            with contextlib.suppress(ConnectionError):  # the client hangs up once over its cap
                for start in range(0, len(server.body), 65536):
                    await streamed.write(server.body[start:start + 65536])
            return streamed
        return web.Response(body=server.body, status=server.status, content_type="application/json",
                            headers=server.headers)

    app = web.Application()
    app.router.add_get("/jwks", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()  # bound and listening once this returns
        host, port = runner.addresses[0][:2]
        server.url = f"http://{host}:{port}/jwks"
        yield server
    finally:
        await runner.cleanup()


async def test_url_source_initial_fetch(jwks_server: JwksServer, keys: KeyRing) -> None:
    jwks_server.set_keys(public_jwk(keys.rsa, "one"), public_jwk(keys.ed25519, "ed"))
    got = Collected()
    source = url_source(jwks_server.url, got)
    ks = await source.load_now()
    assert ks is not None and set(ks.keys) == {"one", "ed"}
    assert got.keysets == [ks]
    assert jwks_server.hits == 1


@pytest.mark.parametrize(
    ("status", "body", "kwargs", "delay"),
    [
        (500, b"oops", {}, 0.0),
        (404, b"{}", {}, 0.0),
        (200, b"<html>", {}, 0.0),
        (200, b'{"keys": []}', {}, 0.0),
        (200, b'{"keys": [' + b" " * 5000 + b"]}", {"max_bytes": 1000}, 0.0),
        (200, b"{}", {"timeout_s": 0.1}, 0.5),
    ],
    ids=["http-500", "http-404", "not-json", "no-keys", "too-large", "timeout"],
)
async def test_url_source_failed_first_fetch_returns_none(
    jwks_server: JwksServer, status: int, body: bytes, kwargs: dict[str, Any], delay: float
) -> None:
    jwks_server.status, jwks_server.body, jwks_server.delay_s = status, body, delay
    got = Collected()
    source = url_source(jwks_server.url, got, **kwargs)
    assert await source.load_now() is None
    assert source.current is None
    assert got.keysets == []


async def test_url_source_unreachable_returns_none(keys: KeyRing) -> None:
    got = Collected()
    source = url_source("http://127.0.0.1:1/jwks", got, timeout_s=1.0)
    assert await source.load_now() is None


async def test_url_source_rotation_via_request_refresh_with_cooldown(
    jwks_server: JwksServer, keys: KeyRing, running: Any
) -> None:
    jwks_server.set_keys(public_jwk(keys.rsa, "one"))
    got = Collected()
    clock = FakeClock()
    source = url_source(jwks_server.url, got, refresh_interval_s=3600, cooldown_s=30.0, clock=clock)
    await source.load_now()
    await got.next()
    running(source.run())
    jwks_server.set_keys(public_jwk(keys.rsa2, "two"))

    clock.now = 10.0  # unknown kid seen, but the initial fetch was 10 s ago: the fetch loop is never woken
    assert [source.request_refresh() for _ in range(50)] == [False] * 50
    assert jwks_server.hits == 1
    assert source.current is not None and list(source.current.keys) == ["one"]

    clock.now = 30.0  # cooldown over: a burst of unknown kids wakes the loop once, so costs one fetch
    assert [source.request_refresh() for _ in range(50)] == [True] + [False] * 49
    assert list((await got.next()).keys) == ["two"]
    await source.wait_fetches(2)
    assert jwks_server.hits == 2

    clock.now = 45.0
    assert [source.request_refresh() for _ in range(50)] == [False] * 50
    assert source.fetches == 2 and jwks_server.hits == 2


async def test_url_source_failure_keeps_last_good_keys(
    jwks_server: JwksServer, keys: KeyRing, running: Any
) -> None:
    jwks_server.set_keys(public_jwk(keys.rsa, "one"))
    got = Collected()
    clock = FakeClock()
    source = url_source(jwks_server.url, got, refresh_interval_s=3600, cooldown_s=30.0, clock=clock)
    first = await source.load_now()
    assert await got.next() is first
    running(source.run())

    for fetches, (status, body) in enumerate([(500, b"down"), (200, b"{garbage"), (200, b'{"keys": []}')], 2):
        jwks_server.status, jwks_server.body = status, body
        clock.now += 31
        assert source.request_refresh()
        await source.wait_fetches(fetches)  # that fetch has finished (and failed): no time-based wait
        assert source.current is first
        assert got.keysets == [first]

    jwks_server.status = 200
    jwks_server.set_keys(public_jwk(keys.rsa2, "two"))
    clock.now += 31
    source.request_refresh()
    assert list((await got.next()).keys) == ["two"]


async def test_url_source_run_retries_with_backoff_until_first_success(
    jwks_server: JwksServer, keys: KeyRing, running: Any
) -> None:
    jwks_server.status, jwks_server.body = 503, b"starting"
    got = Collected()
    source = url_source(jwks_server.url, got, refresh_interval_s=3600, retry_base_s=0.02)
    assert await source.load_now() is None
    running(source.run())
    await jwks_server.wait_hits(4)
    assert got.keysets == []
    jwks_server.status = 200
    jwks_server.set_keys(public_jwk(keys.rsa, "one"))
    assert list((await got.next()).keys) == ["one"]


async def test_url_source_periodic_refresh_and_no_callback_when_unchanged(
    jwks_server: JwksServer, keys: KeyRing, running: Any
) -> None:
    jwks_server.set_keys(public_jwk(keys.rsa, "one"))
    got = Collected()
    source = url_source(jwks_server.url, got, refresh_interval_s=0.05)
    await source.load_now()
    await got.next()
    running(source.run())
    await jwks_server.wait_hits(4)
    assert len(got.keysets) == 1  # same keys fetched again: nothing delivered, caches stay warm
    jwks_server.set_keys(public_jwk(keys.rsa2, "two"))
    assert list((await got.next()).keys) == ["two"]


# --- URL source hardening: https only, no redirects, bounded answers -----------------------------------


def test_plain_http_needs_allow_insecure() -> None:
    with pytest.raises(ValueError, match=r"must be https://.*DEVELOPMENT ONLY"):
        JwksUrlSource("http://keys.example/jwks.json", Collected())
    with pytest.raises(ValueError, match="must be https://"):
        JwksUrlSource("ftp://keys.example/jwks.json", Collected(), allow_insecure=True)
    JwksUrlSource("https://keys.example/jwks.json", Collected())
    JwksUrlSource("http://127.0.0.1/jwks.json", Collected(), allow_insecure=True)


@pytest.mark.parametrize("same_host", [False, True], ids=["other-host", "same-host"])
async def test_redirects_are_never_followed(jwks_server: JwksServer, keys: KeyRing, same_host: bool,
                                            caplog: pytest.LogCaptureFixture) -> None:
    # Envoy's JWKS fetcher (jwt_authn, common/jwks_fetcher.cc) takes a 200 and nothing else; so do we:
    # the keys only ever come from the configured URL, whatever host a redirect names.
    target = JwksServer(url="")
    target.set_keys(public_jwk(keys.attacker_rsa, "evil"))
    app = web.Application()

    async def serve_target(_request: web.Request) -> web.Response:
        target.hits += 1
        return web.Response(body=target.body, content_type="application/json")

    app.router.add_get("/jwks", serve_target)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        location = jwks_server.url if same_host else f"http://localhost:{port}/jwks"
        jwks_server.status, jwks_server.headers = 302, {"location": location}
        got = Collected()
        with caplog.at_level(logging.WARNING, logger="ext_authz.jwks_sources"):
            assert await url_source(jwks_server.url, got).load_now() is None
        assert got.keysets == []
        assert target.hits == 0 and jwks_server.hits == 1
        assert "HTTP 302 redirect" in caplog.text and "not followed" in caplog.text
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("stream", "headers"), [(True, {}), (False, {}), (False, {"content-encoding": "gzip"})],
                         ids=["chunked-over-cap", "content-length-over-cap", "compressed"])
async def test_oversized_or_encoded_answers_are_refused(jwks_server: JwksServer, keys: KeyRing, stream: bool,
                                                        headers: dict[str, str]) -> None:
    # A usable JWKS, padded over the cap when the cap is under test: only the cap can refuse it.
    pad = " " * 400_000 if not headers else ""
    jwks_server.body = json.dumps({"keys": [public_jwk(keys.rsa, "one")], "pad": pad}).encode()
    jwks_server.stream, jwks_server.headers = stream, headers
    source = url_source(jwks_server.url, Collected(), max_bytes=100_000)
    assert await source.load_now() is None
    assert source.fetches == 1


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


async def test_https_certificates_are_verified(tmp_path: Path, keys: KeyRing) -> None:
    # An https:// URL whose server shows a certificate no CA vouches for gives no keys.
    app = web.Application()
    hits = 0

    async def handler(_request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response(body=json.dumps({"keys": [public_jwk(keys.rsa, "one")]}), content_type="application/json")

    app.router.add_get("/jwks", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_self_signed(tmp_path))
        await site.start()
        port = runner.addresses[0][1]
        source = JwksUrlSource(f"https://127.0.0.1:{port}/jwks", Collected())
        assert await source.load_now() is None
        assert hits == 0  # the handshake failed: no request was ever sent
    finally:
        await runner.cleanup()


async def test_seeded_keys_survive_a_failed_fetch(jwks_server: JwksServer, keys: KeyRing) -> None:
    first = parse_jwks({"keys": [public_jwk(keys.rsa, "one")]})
    got = Collected()
    source = url_source(jwks_server.url, got)
    source.seed(first)
    assert got.keysets == [first]
    jwks_server.status = 503
    assert await source.load_now() is first
    assert got.keysets == [first]


async def test_retries_while_failing_are_capped(jwks_server: JwksServer, running: Any) -> None:
    # A provider without keys keeps the service NOT_SERVING: retries must not drift to refresh_interval_s.
    jwks_server.status = 503
    source = url_source(jwks_server.url, Collected(), refresh_interval_s=3600, retry_base_s=0.01, retry_cap_s=0.02)
    running(source.run())
    async with asyncio.timeout(3.0):  # capped: ~0.2 s of back-off; doubling without the cap: 5 s
        await source.wait_fetches(10)
