"""services.<name>.workers: N processes share the gRPC port; ready once all are bound; the parent serves their
summed metrics, every family present."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from outrider.process import ManagedProcess, free_port, http_ready
from tests.harness import KEYS_DIR, ROOT, Stack, example_config_dict, with_free_ports, write_config

MODULES = {"ext_authz": "ext_authz", "ratelimit": "ratelimit_service", "ext_proc": "ext_proc"}


def children(pid: int) -> set[int]:
    """Direct children of a process, read from /proc at once (no `ps`: the test races the workers' start)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except FileNotFoundError:
        return set()


def listening(port: int, pids: set[int]) -> set[int]:
    """Which of `pids` hold a listening TCP socket on `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(fields[9])
    found = set()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        found.add(pid)
    return found


def metrics_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    Stack.wait_until(predicate, timeout_s, what)


def service_process(tmp_path: Path, section: str, data: dict[str, Any]) -> ManagedProcess:
    data["services"][section]["workers"] = 2
    config = write_config(data, tmp_path / "gateway.yaml")
    svc = data["services"][section]
    return ManagedProcess(section, [sys.executable, "-m", MODULES[section], "--config", str(config)],
                          ready=http_ready(f"http://127.0.0.1:{svc['metrics_port']}/metrics"),
                          log_path=tmp_path / f"{section}.log", cwd=ROOT)


@pytest.fixture
def running() -> Iterator[list[ManagedProcess]]:
    """Processes a test started, stopped at its end whatever happened (held workers are let go first)."""
    procs: list[ManagedProcess] = []
    yield procs
    for proc in procs:
        if proc.proc is not None:
            for pid in children(proc.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        proc.stop()


Scraped = dict[str, list[tuple[str, dict[str, str], float]]]


def scrape(port: int) -> Scraped:
    """/metrics → {family: [(sample name, labels, value)]}, for the families that have samples."""
    out: Scraped = {}
    for family in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text):
        for sample in family.samples:
            out.setdefault(family.name, []).append((sample.name, sample.labels, sample.value))
    return out


def declared_families(section: str) -> set[str]:
    """Every metric family the service declares, from its metrics built in a registry of the test's own."""
    registry = CollectorRegistry()
    if section == "ext_authz":
        from ext_authz.metrics import service_metrics as authz_metrics

        authz_metrics(registry)
    elif section == "ratelimit":
        from ratelimit_service.metrics import service_metrics as rl_metrics

        rl_metrics(registry)
    else:
        from ext_proc.metrics import service_metrics as ep_metrics

        ep_metrics(registry)
    return {family.name for family in registry.collect()}


def assert_every_family_present(section: str, scraped: Scraped) -> None:
    # The service's own families, and the kernel's reload counter every service reports.
    declared = declared_families(section) | {"outrider_config_reloads"}
    assert len(declared) >= 5
    missing = declared - set(scraped)
    assert not missing, f"families missing from the aggregated /metrics: {sorted(missing)}"


def total(scraped: Scraped, sample: str, **labels: str) -> float:
    """The sum of the samples named `sample` whose labels include `labels`."""
    want = set(labels.items())
    return sum(value for rows in scraped.values() for name, found, value in rows
               if name == sample and want <= set(found.items()))


# ---- readiness ------------------------------------------------------------------------------------------


def hold_one_worker(proc: ManagedProcess, port: int) -> tuple[int, int]:
    """SIGSTOP one of the two workers right after the fork, long before its imports are done: (held, other)."""
    assert proc.proc is not None
    deadline = time.monotonic() + 20
    while len(workers := children(proc.proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.002)
    assert len(workers) == 2, f"{proc.name} did not fork 2 workers"
    held = max(workers)
    os.kill(held, signal.SIGSTOP)
    assert not listening(port, {held}), "the worker bound before it could be held; test inconclusive"
    return held, min(workers)


@pytest.mark.parametrize("section", sorted(MODULES))
def test_ready_only_once_every_worker_is_bound(tmp_path: Path, section: str,
                                               running: list[ManagedProcess]) -> None:
    data = with_free_ports(example_config_dict())
    svc = data["services"][section]
    proc = service_process(tmp_path, section, data)
    running.append(proc.start())
    held, other = hold_one_worker(proc, svc["port"])

    def other_serves() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{svc['port']}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    # The free worker binds and answers; the service must still not report ready while the other is held.
    wait_for(other_serves, "the free worker to serve")
    assert listening(svc["port"], {held, other}) == {other}
    assert proc.running
    assert not metrics_up(svc["metrics_port"]), "ready reported while a worker was not bound"

    os.kill(held, signal.SIGCONT)
    wait_for(lambda: metrics_up(svc["metrics_port"]), "readiness after the held worker went on")
    # The first moment the service reports ready, both workers listen on the shared port.
    assert listening(svc["port"], {held, other}) == {held, other}


def test_a_stop_while_a_worker_is_held_stops_every_worker(tmp_path: Path, running: list[ManagedProcess]) -> None:
    data = with_free_ports(example_config_dict())
    proc = service_process(tmp_path, "ext_authz", data)
    running.append(proc.start())
    held, other = hold_one_worker(proc, data["services"]["ext_authz"]["port"])
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    proc.proc.wait(20)  # the parent reaps its workers before it exits: the held one too must have ended
    assert not {held, other} & children(proc.proc.pid)
    for pid in (held, other):
        assert not os.path.exists(f"/proc/{pid}")


def test_workers_die_with_a_parent_killed_hard(tmp_path: Path, running: list[ManagedProcess]) -> None:
    data = with_free_ports(example_config_dict())
    proc = service_process(tmp_path, "ext_authz", data)
    running.append(proc.start().wait_ready(30))
    assert proc.proc is not None
    workers = children(proc.proc.pid)
    assert len(workers) == 2
    proc.proc.kill()  # SIGKILL: the parent cannot stop its workers; the kernel's parent-death signal does
    proc.proc.wait(5)
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers), "the orphaned workers to end", 5)


ONE_PROCESS = """
import sys, urllib.request
from outrider.metrics import start_metrics_server
from outrider.workers import notify_bound

def up():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=2):
            return True
    except OSError:
        return False

start_metrics_server("127.0.0.1", int(sys.argv[1]))  # what a service does before serve() binds gRPC
print(up())
notify_bound()  # what serve() does once the port is bound
print(up())
"""


def test_one_process_opens_metrics_only_once_grpc_is_bound(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", ONE_PROCESS, str(free_port())], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=True)
    assert result.stdout.split() == ["False", "True"]


def test_a_worker_that_cannot_start_fails_the_start(tmp_path: Path, running: list[ManagedProcess]) -> None:
    data = with_free_ports(example_config_dict())
    data["services"]["ext_authz"]["address"] = "192.0.2.1"  # TEST-NET: no interface here has it, bind fails
    proc = service_process(tmp_path, "ext_authz", data)
    running.append(proc.start())
    assert proc.proc is not None
    assert proc.proc.wait(30) != 0  # as with one worker: exits, instead of restarting a broken start forever


def test_a_crashed_worker_is_replaced_and_binds_again(tmp_path: Path, running: list[ManagedProcess]) -> None:
    data = with_free_ports(example_config_dict())
    svc = data["services"]["ext_authz"]
    proc = service_process(tmp_path, "ext_authz", data)
    running.append(proc.start().wait_ready(30))
    assert proc.proc is not None
    parent = proc.proc.pid
    before = children(parent)
    assert listening(svc["port"], before) == before and len(before) == 2
    crashed = min(before)
    os.kill(crashed, signal.SIGKILL)

    def replaced() -> bool:
        now = children(parent)
        return len(now) == 2 and crashed not in now and listening(svc["port"], now) == now

    wait_for(replaced, "a new worker bound in place of the crashed one")
    assert metrics_up(svc["metrics_port"])
    request = external_auth_pb2.CheckRequest()
    request.attributes.context_extensions["resource"] = "profile"
    for _ in range(10):
        with grpc.insecure_channel(f"127.0.0.1:{svc['port']}") as channel:
            reply = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)
        assert reply.denied_response.status.code == 401


# ---- decisions and aggregated metrics, per service ------------------------------------------------------


def test_ext_authz_two_workers_decide_and_sum_metrics(tmp_path: Path, running: list[ManagedProcess]) -> None:
    from outrider.devtoken import mint_dev_token

    data = with_free_ports(example_config_dict())
    svc = data["services"]["ext_authz"]
    proc = service_process(tmp_path, "ext_authz", data)
    running.append(proc.start().wait_ready(30))
    provider = data["auth"]["providers"][0]
    token = mint_dev_token(KEYS_DIR, provider["issuer"], provider["audiences"][0], subject="wk", roles=["user"],
                           tier="free")
    anonymous = external_auth_pb2.CheckRequest()
    anonymous.attributes.request.http.method = "GET"
    anonymous.attributes.context_extensions["resource"] = "profile"
    signed = external_auth_pb2.CheckRequest()
    signed.CopyFrom(anonymous)
    signed.attributes.request.http.headers["authorization"] = f"Bearer {token}"
    for _ in range(20):
        # A fresh channel per call: the kernel deals new connections over both workers. Ready means both are
        # bound, so no call may fail.
        for request, allowed in ((anonymous, False), (signed, True)):
            with grpc.insecure_channel(f"127.0.0.1:{svc['port']}") as channel:
                reply = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)
            if allowed:
                assert reply.HasField("ok_response") and reply.status.code == 0
            else:
                assert reply.denied_response.status.code == 401
    scraped = scrape(svc["metrics_port"])
    # 40 calls over 2 workers: the sums are right only if the parent adds both workers' counts.
    assert total(scraped, "authz_checks_total", decision="deny", reason="token_missing") == 20
    assert total(scraped, "authz_checks_total", decision="allow") == 20
    assert total(scraped, "authz_jwks_updates_total", provider=provider["name"]) == 2  # keys loaded once per worker
    assert_every_family_present("ext_authz", scraped)
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(20) == 0


RATE_LIMITS = """
domain: workers
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 5}
  - key: soft
    rate_limit: {unit: hour, requests_per_unit: 1}
    shadow_mode: true
"""


def rl_request(key: str, value: str) -> rls_pb2.RateLimitRequest:
    out = rls_pb2.RateLimitRequest(domain="workers")
    out.descriptors.add().entries.add(key=key, value=value)
    return out


def test_ratelimit_two_workers_share_redis_counts_and_sum_metrics(tmp_path: Path, redis_server: str,
                                                                  running: list[ManagedProcess]) -> None:
    data = with_free_ports(example_config_dict())
    (tmp_path / "limits.yaml").write_text(RATE_LIMITS)
    # One store for both workers (the in-memory one would count per worker); a generous budget keeps a loaded
    # machine from answering in the failure mode.
    data["rate_limits"].update({"redis": {"url": redis_server}, "files": [str(tmp_path / "limits.yaml")],
                                "budget_ms": 1000})
    data["services"]["ratelimit"]["timeout_ms"] = 2000
    svc = data["services"]["ratelimit"]
    proc = service_process(tmp_path, "ratelimit", data)
    running.append(proc.start().wait_ready(30))
    Response = rls_pb2.RateLimitResponse
    codes = []
    for key, count in (("user", 8), ("soft", 3)):
        for _ in range(count):
            with grpc.insecure_channel(f"127.0.0.1:{svc['port']}") as channel:
                reply = rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(rl_request(key, "ann"), timeout=5)
            codes.append((key, reply.overall_code))
    assert codes == [("user", Response.OK)] * 5 + [("user", Response.OVER_LIMIT)] * 3 + [("soft", Response.OK)] * 3
    scraped = scrape(svc["metrics_port"])
    user = {"domain": "workers", "descriptor": "workers.user"}
    soft = {"domain": "workers", "descriptor": "workers.soft"}
    assert total(scraped, "rate_limit_hits_total", **user) == 8
    assert total(scraped, "rate_limit_rejections_total", **user) == 3
    assert total(scraped, "rate_limit_near_limit_total", **user) == 1  # the 5th hit of 5
    assert total(scraped, "rate_limit_hits_total", **soft) == 3
    assert total(scraped, "rate_limit_shadow_total", **soft) == 2
    assert total(scraped, "rate_limit_failure_mode_total") == 0
    assert_every_family_present("ratelimit", scraped)


def test_ratelimit_memory_store_with_workers_warns(tmp_path: Path, running: list[ManagedProcess]) -> None:
    data = with_free_ports(example_config_dict())
    assert data["rate_limits"].get("redis") is None
    proc = service_process(tmp_path, "ratelimit", data)
    running.append(proc.start().wait_ready(30))
    log = tmp_path / "ratelimit.log"
    wait_for(lambda: "each worker keeps its own counters" in log.read_text(), "the warning in the log")


def process(port: int, route: str, path: str) -> ext_proc_pb.ProcessingResponse:
    message = ext_proc_pb.ProcessingRequest()
    headers = message.request_headers.headers.headers
    for key, value in ((":method", "GET"), (":path", path), (":authority", "gw"), ("x-request-id", "r1")):
        headers.add(key=key, raw_value=value.encode())
    message.request_headers.end_of_stream = True
    message.attributes["envoy.filters.http.ext_proc"].fields["source.address"].string_value = "10.0.0.7:5555"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
        replies = stub.Process(iter([message]), metadata=(("x-outrider-route", route),), timeout=5)
        return next(iter(replies))


def test_ext_proc_two_workers_decide_and_sum_metrics(tmp_path: Path, running: list[ManagedProcess]) -> None:
    data = with_free_ports(example_config_dict())
    svc = data["services"]["ext_proc"]
    proc = service_process(tmp_path, "ext_proc", data)
    running.append(proc.start().wait_ready(30))
    for _ in range(10):
        passed = process(svc["port"], "public", "/api/v1/public/x?a=1")
        set_headers = {h.header.key: h.header.raw_value.decode()
                       for h in passed.request_headers.response.header_mutation.set_headers}
        assert set_headers[":path"] == "/api/v1/public/x?a=1&version=v1"
        refused = process(svc["port"], "public", "/api/v1/public/x?q=%3Cscript%3Ealert(1)%3C/script%3E")
        assert refused.immediate_response.status.code == 400
    scraped = scrape(svc["metrics_port"])
    assert total(scraped, "ext_proc_streams_total", route="public") == 20
    assert total(scraped, "ext_proc_events_total", kind="rejected") == 10
    assert total(scraped, "ext_proc_message_duration_seconds_count") == 20
    assert_every_family_present("ext_proc", scraped)
