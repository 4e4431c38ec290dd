"""What only a real Redis shows: TTLs on every key, the escaped key scheme, cluster slots, NOSCRIPT."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from outrider.process import ManagedProcess
from ratelimit_service.backends.redis_backend import RedisBackend, RedisClusterBackend
from ratelimit_service.decision import plan
from ratelimit_service.guard import GuardedBackend
from tests.ratelimit.helpers import T0, desc, run, table_of
from tests.redis_harness import redis_process, redis_url

ALL_ALGORITHMS = """
domain: d
descriptors:
  - key: fixed
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: sliding
    rate_limit: {unit: hour, requests_per_unit: 5, algorithm: sliding_window}
  - key: bucket
    rate_limit: {unit: second, requests_per_unit: 5, burst: 10, algorithm: token_bucket}
"""
THREE = [desc(("fixed", "a")), desc(("sliding", "a")), desc(("bucket", "a"))]


@pytest.fixture
async def raw(shared_redis: ManagedProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url(shared_redis))
    yield client
    await client.aclose()


async def test_every_key_written_has_a_ttl(shared_redis: ManagedProcess, raw: aioredis.Redis) -> None:
    backend = RedisBackend(redis_url(shared_redis), key_prefix="ttl:")
    table = table_of(ALL_ALGORITHMS)
    for i in range(8):  # past the limits too: refused requests write nothing, admitted ones set TTLs
        await run(backend, table, "d", THREE, T0 + i)
    keys = [k async for k in raw.scan_iter("ttl:*")]
    assert len(keys) == 3
    for key in keys:
        assert await raw.pttl(key) > 0, key
    await backend.close()


async def test_fixed_window_keys_escape_every_part(shared_redis: ManagedProcess, raw: aioredis.Redis) -> None:
    # envoyproxy/ratelimit's layout, <prefix><domain>_<key>_<value>_..._<window start, unix seconds>,
    # INCRBY'd, with `_` and `\` escaped in each part so that no two descriptors share a key (keys.py).
    backend = RedisBackend(redis_url(shared_redis), key_prefix="compat:")
    table = table_of("""
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 10}
""")
    for _ in range(3):
        await run(backend, table, "edge", [desc(("remote_address", "10.0.0.1"))], T0 + 5_000)
    start = (T0 // 1000 // 60) * 60
    assert await raw.get(f"compat:edge_remote\\_address_10.0.0.1_{start}") == b"3"
    await backend.close()


async def test_a_flushed_script_cache_is_reloaded(shared_redis: ManagedProcess, raw: aioredis.Redis) -> None:
    backend = RedisBackend(redis_url(shared_redis), key_prefix="flush:")
    table = table_of(ALL_ALGORITHMS)
    await run(backend, table, "d", THREE, T0)
    await raw.script_flush()
    decision = await run(backend, table, "d", THREE, T0)
    assert not decision.over and decision.statuses[0].remaining == 3
    await backend.close()


async def test_cluster_keeps_one_requests_keys_in_one_slot(redis_cluster: list[int]) -> None:
    backend = RedisClusterBackend(f"redis://127.0.0.1:{redis_cluster[0]}/0", key_prefix="slot:")
    table = table_of(ALL_ALGORITHMS)
    # Different descriptors and values would land on different nodes without the hash tag (CROSSSLOT).
    for value in ("a", "b", "c", "d"):
        descriptors = [desc(("fixed", value)), desc(("sliding", value + "x")), desc(("bucket", value + "y"))]
        assert not (await run(backend, table, "d", descriptors, T0)).over
    await backend.close()


async def test_a_stalled_redis_fails_fast_then_recovers_in_order(tmp_path: Path) -> None:
    proc = redis_process(tmp_path / "stalled").start().wait_ready(10)
    backend = RedisBackend(redis_url(proc), timeout_s=0.05)
    guard = GuardedBackend(backend, 0.05, min_backoff_s=0.01, max_backoff_s=0.05)
    table = table_of(ALL_ALGORITHMS)
    laid_out = plan(table, "d", [desc(("fixed", "z"))], T0)
    try:
        assert await guard.evaluate("d", laid_out.checks, T0) == [(False, 4, 60_000)]
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGSTOP)  # a Redis that accepts bytes but never answers
        stalled = [await guard.evaluate("d", laid_out.checks, T0) for _ in range(5)]
        assert stalled == [None] * 5
        os.kill(proc.proc.pid, signal.SIGCONT)
        for _ in range(200):
            outcome = await guard.evaluate("d", laid_out.checks, T0)
            if outcome is not None:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("no recovery")
        # Late replies to abandoned calls were dropped, not handed to the next caller: the count is
        # this call's own (the abandoned calls that reached Redis were charged, as with any client).
        charged = int(await backend._client.call("GET", laid_out.checks[0].keys[0]))
        assert outcome == [(False, 5 - charged, 60_000)]
    finally:
        if proc.proc is not None and proc.running:
            os.kill(proc.proc.pid, signal.SIGCONT)
        await backend.close()
        proc.stop()


async def test_concurrent_calls_on_one_connection_get_their_own_replies(shared_redis: ManagedProcess) -> None:
    from ratelimit_service.backends.resp import RespClient, RespError

    client = RespClient(redis_url(shared_redis), connect_timeout_s=2.0)
    keys = [f"fifo:{i}" for i in range(200)]
    await asyncio.gather(*(client.call("SET", key, i) for i, key in enumerate(keys)))
    values = await asyncio.gather(*(client.call("GET", key) for key in keys))
    assert values == [str(i).encode() for i in range(200)]
    with pytest.raises(RespError, match="NOSCRIPT"):
        await client.call("EVALSHA", "0" * 40, 0)
    assert await client.call("PING") == b"PONG"  # an error reply does not shift later replies
    await client.close()
