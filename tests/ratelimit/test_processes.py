"""Real service processes on a real Redis: one global limit across replicas; Redis killed and back."""

from __future__ import annotations

import asyncio
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from outrider.process import ManagedProcess, http_ready
from tests.harness import ROOT, example_config_dict, with_free_ports, write_config
from tests.redis_harness import redis_process, redis_url

Response = rls_pb2.RateLimitResponse
LIMITS = """
domain: shared
descriptors:
  - key: fixed
    rate_limit: {unit: day, requests_per_unit: 40}
  - key: sliding
    rate_limit: {unit: day, requests_per_unit: 40, algorithm: sliding_window}
  - key: bucket
    rate_limit: {unit: day, requests_per_unit: 40, burst: 40, algorithm: token_bucket}
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 1000}
"""


def service_process(workdir: Path, name: str, url: str, cluster: bool = False, key_prefix: str = "",
                    **rate_limits: object) -> ManagedProcess:
    data = with_free_ports(example_config_dict())
    if not (workdir / "limits.yaml").exists():
        (workdir / "limits.yaml").write_text(LIMITS)
    data["rate_limits"].update({"redis": {"url": url, "cluster": cluster, "key_prefix": key_prefix},
                                "files": [str(workdir / "limits.yaml")], "budget_ms": 1000, **rate_limits})
    data["logging"]["decisions"] = False
    # Exact counts need the store's answers: a generous budget keeps a loaded test machine from
    # sending requests to the failure mode (tested on its own below with the real 20 ms budget).
    data["services"]["ratelimit"]["timeout_ms"] = 2000
    config = write_config(data, workdir / f"{name}.yaml")
    svc = data["services"]["ratelimit"]
    proc = ManagedProcess(name, [sys.executable, "-m", "ratelimit_service",
                                 "--config", str(config)],
                          ready=http_ready(f"http://127.0.0.1:{svc['metrics_port']}/metrics"),
                          log_path=workdir / f"{name}.log", cwd=ROOT)
    proc.port = svc["port"]  # type: ignore[attr-defined]
    proc.metrics_port = svc["metrics_port"]  # type: ignore[attr-defined]
    return proc


def rl_request(key: str, value: str) -> rls_pb2.RateLimitRequest:
    out = rls_pb2.RateLimitRequest(domain="shared")
    out.descriptors.add().entries.add(key=key, value=value)
    return out


def metric(proc: ManagedProcess, name: str) -> float:
    url = f"http://127.0.0.1:{proc.metrics_port}/metrics"  # type: ignore[attr-defined]
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[ManagedProcess]:
    proc = redis_process(tmp_path / "redis").start().wait_ready(10)
    yield proc
    proc.stop()


@pytest.mark.parametrize("store", ["redis", "cluster"])
def test_two_replicas_share_one_global_limit(tmp_path: Path, store: str, request: pytest.FixtureRequest) -> None:
    if store == "redis":
        url, cluster = redis_url(request.getfixturevalue("redis_proc")), False
    else:
        url, cluster = f"redis://127.0.0.1:{request.getfixturevalue('redis_cluster')[0]}/0", True
    prefix = f"{store}{uuid.uuid4().hex[:6]}:"
    replicas = [service_process(tmp_path, f"rls{i}", url, cluster=cluster, key_prefix=prefix) for i in range(2)]
    try:
        for proc in replicas:
            proc.start()
        for proc in replicas:
            proc.wait_ready(20)

        async def hammer() -> dict[str, int]:
            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p.port}") for p in replicas]  # type: ignore[attr-defined]
            stubs = [rls_pb2_grpc.RateLimitServiceStub(c) for c in channels]
            admitted: dict[str, int] = {}

            async def client(index: int, key: str) -> None:
                stub = stubs[index % 2]
                for _ in range(2):
                    response = await stub.ShouldRateLimit(rl_request(key, "hot"), timeout=10)
                    admitted[key] = admitted.get(key, 0) + (response.overall_code == Response.OK)

            for key in ("fixed", "sliding", "bucket"):
                await asyncio.gather(*(client(i, key) for i in range(64)))
            for channel in channels:
                await channel.close()
            return admitted

        assert asyncio.run(hammer()) == {"fixed": 40, "sliding": 40, "bucket": 40}
        assert metric(replicas[0], "rate_limit_failure_mode_total") == 0
    finally:
        for proc in replicas:
            proc.stop()


def test_redis_killed_mid_run_answers_in_failure_mode_then_recovers(tmp_path: Path,
                                                                    redis_proc: ManagedProcess) -> None:
    service = service_process(tmp_path, "rls", redis_url(redis_proc), budget_ms=20)
    try:
        service.start().wait_ready(20)

        async def run() -> None:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:  # type: ignore[attr-defined]
                stub = rls_pb2_grpc.RateLimitServiceStub(channel)

                async def ask() -> rls_pb2.RateLimitResponse:
                    # A deadline far above the 20 ms budget: what is checked is that the service answers.
                    return await stub.ShouldRateLimit(rl_request("user", "kim"), timeout=1.0)

                async def until_counted() -> rls_pb2.RateLimitResponse:
                    # Poll: a loaded machine may blow the 20 ms budget now and then (that is the point).
                    for _ in range(200):
                        response = await ask()
                        if response.statuses[0].HasField("current_limit"):
                            return response
                        await asyncio.sleep(0.05)
                    raise AssertionError("the store never answered")

                assert (await until_counted()).statuses[0].limit_remaining >= 990
                redis_proc.kill()
                before = metric(service, 'rate_limit_failure_mode_total{mode="allow"}')
                for _ in range(20):
                    response = await ask()
                    assert response.overall_code == Response.OK
                    assert not response.statuses[0].HasField("current_limit")  # no store, no count
                assert metric(service, 'rate_limit_failure_mode_total{mode="allow"}') - before == 20
                redis_proc.start().wait_ready(10)
                # Recovery is automatic; the restarted Redis kept nothing, so counting starts again.
                assert (await until_counted()).statuses[0].limit_remaining >= 990

        asyncio.run(run())
        assert service.running
        log = (tmp_path / "rls.log").read_text()
        assert "Traceback" not in log
        assert "rate limit store failed" in log and "rate limit store is back" in log
    finally:
        service.stop()


def test_a_changed_file_goes_live_in_a_running_service(tmp_path: Path, redis_proc: ManagedProcess) -> None:
    service = service_process(tmp_path, "rls", redis_url(redis_proc))
    limits = tmp_path / "limits.yaml"
    try:
        service.start().wait_ready(20)

        async def user_limit() -> int:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:  # type: ignore[attr-defined]
                response = await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(
                    rl_request("user", "lee"), timeout=5)
            return int(response.statuses[0].current_limit.requests_per_unit)

        assert asyncio.run(user_limit()) == 1000
        limits.write_text(LIMITS.replace("requests_per_unit: 1000", "requests_per_unit: 7"))
        for _ in range(200):
            if asyncio.run(user_limit()) == 7:
                break
        else:
            raise AssertionError("the new limit never went live")
        limits.write_text(LIMITS.replace("unit: hour", "unit: fortnight"))  # refused: 7 stays
        for _ in range(200):
            if "config change rejected" in (tmp_path / "rls.log").read_text():
                break
            asyncio.run(asyncio.sleep(0.05))
        else:
            raise AssertionError("the bad file was not reported")
        assert asyncio.run(user_limit()) == 7
        assert str(limits) in (tmp_path / "rls.log").read_text()
    finally:
        service.stop()
