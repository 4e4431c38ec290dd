"""Rate limit fixtures: real redis-server processes (one node, and a 3-node Redis Cluster) on free ports."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from outrider.process import ManagedProcess, free_port
from ratelimit_service.backends.base import Backend
from ratelimit_service.backends.memory import MemoryBackend
from ratelimit_service.backends.redis_backend import RedisBackend, RedisClusterBackend
from tests.redis_harness import redis_process, redis_url


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """One redis-server for the rate limit tests; each test uses its own key prefix."""
    proc = redis_process(tmp_path_factory.mktemp("rl-redis"), name="redis").start().wait_ready(10)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """A real 3-master Redis Cluster (no replicas); yields the node ports."""
    workdir = tmp_path_factory.mktemp("rl-cluster")
    nodes: list[ManagedProcess] = []
    try:
        for i in range(3):
            port = _cluster_port()
            node_dir = workdir / f"node{i}"
            nodes.append(redis_process(node_dir, port, name=f"cluster{i}", extra=[
                "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-node-timeout", "2000"]).start())
        for node in nodes:
            node.wait_ready(10)
        ports = [n.port for n in nodes]  # type: ignore[attr-defined]
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 20
        while True:
            states = [subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True,
                                     text=True, timeout=5).stdout for p in ports]
            if all("cluster_state:ok" in s for s in states):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok: {states}")
            time.sleep(0.05)
        yield ports
    finally:
        for node in nodes:
            node.stop()


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture(params=["memory", "redis", "cluster"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The same behavioural tests run against every backend."""
    made: Backend
    if request.param == "memory":
        made = MemoryBackend()
    elif request.param == "redis":
        proc = request.getfixturevalue("shared_redis")
        made = RedisBackend(redis_url(proc), key_prefix=_prefix(), timeout_s=2.0)
    else:
        ports = request.getfixturevalue("redis_cluster")
        made = RedisClusterBackend(f"redis://127.0.0.1:{ports[0]}/0", key_prefix=_prefix(), timeout_s=2.0)
    yield made
    await made.close()
