"""The purge webhook's answers (aiohttp in-process, memory backend): token, body, no cache; the target check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ext_proc.cache import resource_key
from ext_proc.cache_backends import MemoryCache
from ext_proc.purge import CacheView, PurgeSettings, build_purge_app, purge_target

TOKEN = "k" * 32


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[TestClient, MemoryCache, Path]]:  # type: ignore[type-arg]
    token_file = tmp_path / "token"
    cache = MemoryCache(100)
    view = {"v": CacheView(cache, "p:")}
    settings = PurgeSettings("127.0.0.1", 0, "OUTRIDER_TEST_PURGE_TOKEN_UNSET", token_file)
    client = TestClient(TestServer(build_purge_app(settings, lambda: view["v"])))
    await client.start_server()
    try:
        yield client, cache, token_file
    finally:
        await client.close()


async def test_no_token_configured_refuses_every_call(setup: tuple[TestClient, MemoryCache, Path]) -> None:  # type: ignore[type-arg]
    client, _, token_file = setup
    answer = await client.post("/v1/cache/purge", json={"prefix": "/"}, headers={"authorization": "Bearer "})
    assert answer.status == 503 and (await answer.json())["error"] == "purge_disabled"
    token_file.write_text("short")  # under 16 characters: no token either
    assert (await client.post("/v1/cache/purge", json={"prefix": "/"},
                              headers={"authorization": "Bearer short"})).status == 503


async def test_token_body_and_purge(setup: tuple[TestClient, MemoryCache, Path]) -> None:  # type: ignore[type-arg]
    client, cache, token_file = setup
    token_file.write_text(TOKEN + "\n")  # read at each call: no restart for a rotated secret
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert (await client.post("/v1/cache/purge", json={"prefix": "/"})).status == 401
    assert (await client.post("/v1/cache/purge", data=b'{"prefix": "/"}', headers=auth)).status == 415
    for bad in (b"[]", b"{", b'{"path": 1}', b'{"path": "/a?b=1"}', b'{"other": "/"}'):
        answer = await client.post("/v1/cache/purge", data=bad, headers={**auth, "content-type": "application/json"})
        assert answer.status == 400, bad
    await cache.put("e1", resource_key("p:", "/a/1"), "/a/1", b"1", 60)
    await cache.put("e2", resource_key("p:", "/a/2"), "/a/2", b"2", 60)
    answer = await client.post("/v1/cache/purge", json={"path": "/a/1"}, headers=auth)
    assert answer.status == 200 and await answer.json() == {"purged": 1, "path": "/a/1"}
    assert await cache.get("e1") is None and await cache.get("e2") == b"2"
    answer = await client.post("/v1/cache/purge", json={"prefix": "/a/"}, headers=auth)
    assert await answer.json() == {"purged": 1, "prefix": "/a/"}
    assert (await client.get("/v1/cache/purge", headers=auth)).status == 405


async def test_no_cache_is_a_conflict(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    settings = PurgeSettings("127.0.0.1", 0, "OUTRIDER_TEST_PURGE_TOKEN_UNSET", token_file)
    async with TestClient(TestServer(build_purge_app(settings, lambda: CacheView(None, "")))) as client:
        auth = {"authorization": f"Bearer {TOKEN}"}
        answer = await client.post("/v1/cache/purge", json={"prefix": "/"}, headers=auth)
        assert answer.status == 409


@pytest.mark.parametrize(("doc", "ok"), [
    ({"path": "/x"}, True), ({"prefix": "/"}, True), ({"path": "x"}, False), ({"prefix": "/a\nb"}, False),
    ({"path": "/" + "a" * 5000}, False), ({}, False), ("/x", False),
])
def test_purge_target(doc: object, ok: bool) -> None:
    if ok:
        assert purge_target(doc)[1].startswith("/")
    else:
        with pytest.raises(ValueError):
            purge_target(doc)


async def test_a_taken_port_never_refuses_the_version() -> None:
    import socket

    import httpx

    from ext_proc.app import ExtProcRuntime
    from ext_proc.resource import payload
    from outrider.service_main import StartupSettings
    from tests.ext_proc.conftest import config_from, ext_proc_config_dict

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: ours cannot share it
    taken.listen()
    data = ext_proc_config_dict()
    data["services"]["ext_proc"]["admin_port"] = port = taken.getsockname()[1]
    data["services"]["ext_proc"]["purge_token_env"] = "OUTRIDER_TEST_PURGE_TOKEN_UNSET"
    runtime = ExtProcRuntime(StartupSettings("ext_proc", "127.0.0.1", 0, 0))
    try:
        await runtime.apply("v1", payload(config_from(data)))
        assert runtime.service.live is not None and runtime.service.live.version == "v1"
        taken.close()
        await runtime.apply("v2", payload(config_from(data)))  # tried again with the next version
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"http://127.0.0.1:{port}/v1/cache/purge", json={"prefix": "/"})
        assert answer.status_code == 503  # listening; no token configured
    finally:
        taken.close()
        await runtime.close()
