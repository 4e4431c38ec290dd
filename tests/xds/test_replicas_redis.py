"""RedisStore against a real redis-server: compare-and-set saves, notifications, resubscribe after a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.redis_harness import redis_process, redis_url
from xds_server.redis_store import RedisStore
from xds_server.store import Conflict, State, StoreUnavailable


async def _until(predicate: object, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_saves_are_compare_and_set_and_versions_only_grow(redis_server: str) -> None:
    store = RedisStore(redis_server, "t:")
    other = RedisStore(redis_server, "t:")
    try:
        assert await store.load() is None and await store.stored_version() is None
        await store.save(State(1, "d", {"routes": [{"name": "a"}]}), None)
        with pytest.raises(Conflict) as lost:
            await other.save(State(1, "d", {"routes": []}), None)  # built on "nothing stored": too late
        assert lost.value.found == 1
        await other.save(State(2, "d", {"routes": [{"name": "b"}]}), 1)
        with pytest.raises(Conflict):
            await store.save(State(2, "d", {}), 1)  # built on 1, but 2 is stored
        with pytest.raises(Conflict):
            await store.save(State(2, "d", {}), 2)  # not newer than the stored version
        loaded = await store.load()
        assert loaded == State(2, "d", {"routes": [{"name": "b"}]}) and await store.stored_version() == 2
    finally:
        await store.close()
        await other.close()


async def test_every_save_is_announced_and_a_restart_makes_the_watcher_look_again(tmp_path: Path) -> None:
    proc = redis_process(tmp_path / "redis").start().wait_ready(10)
    store = RedisStore(redis_url(proc), "t:", reconnect_max_s=0.2)
    seen: list[int | None] = []

    async def on_change(version: int | None) -> None:
        seen.append(version)

    watcher = asyncio.create_task(store.watch(on_change))
    try:
        await _until(lambda: seen == [None])  # subscribed: look once
        await store.save(State(1, "d", {}), None)
        await _until(lambda: seen == [None, 1])
        proc.stop()
        with pytest.raises(StoreUnavailable):
            await store.load()
        proc.start().wait_ready(10)  # empty again: nothing persisted
        await _until(lambda: seen[-1:] == [None] and len(seen) == 3)  # resubscribed: look again
    finally:
        watcher.cancel()
        await store.close()
        proc.stop()


async def test_the_password_comes_from_the_environment_not_the_config(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from outrider.config.xds import XdsService
    from xds_server.app import open_store

    proc = redis_process(tmp_path / "redis", extra=["--requirepass", "s3cret"]).start().wait_ready(10)
    settings = XdsService.model_validate(
        {"store": {"kind": "redis", "url": redis_url(proc), "password_env": "TEST_XDS_REDIS_PASSWORD"}})
    try:
        monkeypatch.delenv("TEST_XDS_REDIS_PASSWORD", raising=False)
        anonymous = open_store(settings, tmp_path / "gateway.yaml")
        with pytest.raises(StoreUnavailable):
            await anonymous.load()
        await anonymous.close()
        monkeypatch.setenv("TEST_XDS_REDIS_PASSWORD", "s3cret")
        store = open_store(settings, tmp_path / "gateway.yaml")
        await store.save(State(1, "d", {}), None)
        assert await store.stored_version() == 1
        await store.close()
    finally:
        proc.stop()
