"""Per-route failure policy and load shedding through a real Envoy: an overloaded service answers each
route by its own policy at once, instead of Envoy timing out and admitting by its filter-wide mode.

Issue 11, class 3: the service answered too slowly under load, Envoy hit its timeout and admitted the
requests by failure mode. Envoy's `failure_mode_deny` is one per filter; a route's own choice reaches the
service as the descriptor (outrider_failure_mode, deny), and the service answers by it. Here the store
hangs (a stopped Redis) so decisions pile up in flight; past `overload.max_in_flight` each new request is
answered at once by its route's policy. (Shedding by deadline under CPU overload: test_overload.py.)
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator

import httpx
import pytest

from outrider.process import ManagedProcess
from tests.conftest import start_stack
from tests.harness import Stack, example_config_dict
from tests.redis_harness import redis_process, redis_url

TIMEOUT_MS = 1000  # Envoy's deadline for a ShouldRateLimit call
BUDGET_MS = 600  # how long a decision waits on the store
MAX_IN_FLIGHT = 2


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    proc = redis_process(tmp_path_factory.mktemp("rl-policy-redis")).start().wait_ready(10)
    yield proc
    if proc.proc is not None and proc.running:
        os.kill(proc.proc.pid, signal.SIGCONT)
    proc.stop()


@pytest.fixture(scope="module")
def policy_stack(tmp_path_factory: pytest.TempPathFactory, redis: ManagedProcess) -> Iterator[Stack]:
    data = example_config_dict()
    data["services"]["ratelimit"]["timeout_ms"] = TIMEOUT_MS
    rl = data["rate_limits"]
    rl["redis"] = {"url": redis_url(redis)}
    rl["budget_ms"] = BUDGET_MS
    rl["failure_mode"] = "allow"  # the gateway fails open (and so does Envoy's filter)...
    rl["overload"] = {"max_in_flight": MAX_IN_FLIGHT}
    # Only the requests' decisions here: with the per-connection limit each new connection is one more
    # decision waiting on the store, which would fill max_in_flight before the requests under test.
    rl["per_ip"].pop("new_connections_per_second", None)
    for route in data["routes"]:
        if route["name"] == "public":
            route["rate_limit"] = {"failure_mode": "deny"}  # ...this route fails closed
    stack = start_stack(tmp_path_factory.mktemp("rl-policy"), data)
    yield stack
    stack.stop()


def shed_total(stack: Stack) -> float:
    port = stack.data["services"]["ratelimit"]["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r'^rate_limit_shed_total\{reason="in_flight"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_routes_are_decided_normally(policy_stack: Stack) -> None:
    closed = policy_stack.get("/api/v1/public/a")
    opened = policy_stack.get("/api/v1/search?q=a")
    assert closed.status_code == 200 and closed.headers["ratelimit-limit"] == "200"
    assert opened.status_code == 200 and "ratelimit-limit" in opened.headers  # its endpoint limit binds


def test_past_max_in_flight_each_route_is_answered_by_its_policy_at_once(policy_stack: Stack,
                                                                          redis: ManagedProcess) -> None:
    assert redis.proc is not None
    before = shed_total(policy_stack)
    answers: dict[str, tuple[int, float]] = {}

    def fetch(name: str, path: str) -> None:
        started = time.monotonic()
        with httpx.Client(base_url=policy_stack.url, timeout=10) as client:
            answers[name] = (client.get(path).status_code, time.monotonic() - started)

    def run(paths: dict[str, str]) -> list[threading.Thread]:
        threads = [threading.Thread(target=fetch, args=item) for item in paths.items()]
        for thread in threads:
            thread.start()
        return threads

    os.kill(redis.proc.pid, signal.SIGSTOP)  # a store that accepts and never answers
    try:
        # Two decisions wait on the store for their budget: the service is at max_in_flight.
        holders = run({f"hold{i}": f"/api/v1/search?q=h{i}" for i in range(MAX_IN_FLIGHT)})
        time.sleep(0.2)
        probes = run({f"closed{i}": f"/api/v1/public/p{i}" for i in range(3)}
                     | {f"open{i}": f"/api/v1/search?q=p{i}" for i in range(3)})
        for thread in probes:
            thread.join(10)
        for thread in holders:  # the store still stopped: they wait their budget
            thread.join(10)
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    # The probes, answered while the store was still stopped, were shed: answered at once by their
    # route's policy, the fail-closed route refused, the other admitted.
    for name in (f"closed{i}" for i in range(3)):
        assert answers[name][0] == 429, answers
    for name in (f"open{i}" for i in range(3)):
        assert answers[name][0] == 200, answers
    assert shed_total(policy_stack) - before == 6
    # The holders waited their budget on the store, then got their route's policy (allow).
    holders_s = [answers[f"hold{i}"] for i in range(MAX_IN_FLIGHT)]
    assert [code for code, _ in holders_s] == [200] * MAX_IN_FLIGHT
    assert min(seconds for _, seconds in holders_s) >= BUDGET_MS / 1000


def test_the_store_back_every_route_is_decided_again(policy_stack: Stack) -> None:
    policy_stack.wait_until(lambda: "ratelimit-limit" in policy_stack.get("/api/v1/public/after").headers,
                            what="decisions again")
