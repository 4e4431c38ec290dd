"""Acceptance (issue 12): the pod harness runs what `kubectl kustomize deploy/kubernetes/overlays/dev` renders —
1 Redis, 2 control-plane pods, the demo upstream, 2 gateway pods — and everything is called through the Services'
cluster IPs (the harness's kube-proxy): the walkthrough, one rate limit across both gateway pods, a control-plane
pod killed, a rolling stop under load. Needs root, iproute2 and kubectl (skipped otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from outrider.devtoken import mint_dev_token
from outrider.pod.cluster import LocalCluster
from outrider.pod.network import NETNS_ETC, leftovers, unavailable_reason
from outrider.pod.runner import StopReport
from outrider.pod.workloads import Workload
from tests.harness import KEYS_DIR
from tests.pod.loadgen import LoadGenerator

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "kubernetes" / "overlays" / "dev"
GATEWAY, CONTROL_PLANE = "outrider-gateway", "outrider-control-plane"
GATEWAY_PODS = ("outrider-gateway-0", "outrider-gateway-1")
PUBLIC_PATH = "/api/v1/public/hello"
ADMIN_TOKEN_SECRET = "outrider-admin-token"

pytestmark = [
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is needed to render the dev overlay"),
]


def render() -> list[dict[str, Any]]:
    rendered = subprocess.run(["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, check=True,
                              timeout=60)
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@dataclass
class Dev:
    cluster: LocalCluster
    docs: list[dict[str, Any]]
    plan: list[Workload]
    load: LoadGenerator

    @property
    def gateway_config(self) -> dict[str, Any]:
        config_map = next(d for d in self.docs if d["kind"] == "ConfigMap" and "gateway.yaml" in d.get("data", {}))
        return yaml.safe_load(config_map["data"]["gateway.yaml"])  # type: ignore[no-any-return]

    def token(self, subject: str, tier: str = "free") -> str:
        """DEVELOPMENT ONLY: signed with the published example key (examples/keys)."""
        provider = self.gateway_config["auth"]["providers"][0]
        return mint_dev_token(KEYS_DIR, provider["issuer"], provider["audiences"][0], subject=subject,
                              roles=["user"], tier=tier, ttl_s=600)

    def gateway(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.cluster.url(GATEWAY), trust_env=False, timeout=5, **kwargs)

    def diagnosis(self) -> str:
        """What the Services looked like when something failed: endpoints, refusals, a connect to Redis's
        cluster IP from the host, the Redis pod's last events."""
        assert self.cluster.proxy is not None
        started = time.monotonic()
        try:
            with socket.create_connection((self.cluster.cluster_ips["outrider-redis"], 6379), timeout=5) as conn:
                conn.sendall(b"PING\r\n")
                answer = conn.recv(20)
        except OSError as exc:
            answer = repr(exc).encode()
        redis = self.cluster.pods["outrider-redis-0"]
        endpoints = {key: self.cluster.endpoints(key) for key in ("outrider-redis:6379", f"{CONTROL_PLANE}:18000")}
        return (f"endpoints {endpoints}, "
                f"rejected {dict(self.cluster.proxy.rejected)}, proxy loop late {self.cluster.proxy.lags[-5:]}, "
                f"PING via cluster IP {answer!r} in "
                f"{time.monotonic() - started:.2f}s, redis events {redis.events[-5:]}")

    def gateway_connections(self) -> dict[str, int]:
        assert self.cluster.proxy is not None
        return {pod: self.cluster.proxy.connections[(f"{GATEWAY}:8080", pod)] for pod in GATEWAY_PODS}


@pytest.fixture(scope="module")
def dev() -> Iterator[Dev]:
    docs = render()
    # The dev overlay runs one gateway pod (gateway-replicas.yaml); the acceptance wants two. Edited here in the
    # rendered Deployment (as `kubectl scale` would), so the overlay stays what `make`-less users apply.
    find(docs, "Deployment", GATEWAY)["spec"]["replicas"] = len(GATEWAY_PODS)
    local = LocalCluster(prefix="orp")
    load: LoadGenerator | None = None
    try:
        local.network.create()
        plan = local.plan(local.add_objects([("dev overlay", doc) for doc in docs]))
        assert plan[-1].name == GATEWAY, [w.name for w in plan]
        local.start_workloads(plan[:-1], ready_timeout_s=90)
        # The load runs through the gateway Service while its pods start: a pod that got traffic before every
        # probe of it passed would show as a failed request.
        load = LoadGenerator(local.url(GATEWAY), PUBLIC_PATH, lambda: bool(local.endpoints(f"{GATEWAY}:8080")),
                             rate=40).start()
        local.start_workloads(plan[-1:], ready_timeout_s=120)
        yield Dev(local, docs, plan, load)
    finally:
        if load is not None:
            load.stop()
        local.close()
        assert leftovers("orp", local.network.run_id) == [], "network namespaces or links left behind"


def wait_for(condition: Any, timeout_s: float, what: Any) -> None:
    """`what`: the failure message, or a function making it (evaluated at the failure)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.05)


def test_the_rendered_overlay_starts_backends_first_with_every_replica(dev: Dev) -> None:
    order = [w.name for w in dev.plan]
    assert order.index("outrider-redis") < order.index(CONTROL_PLANE) < order.index(GATEWAY)
    assert order.index("outrider-demo-upstream") < order.index(GATEWAY)
    assert sorted(dev.cluster.pods) == sorted(["outrider-redis-0", "outrider-demo-upstream-0", f"{CONTROL_PLANE}-0",
                                               f"{CONTROL_PLANE}-1", *GATEWAY_PODS])
    # Every Service name (and its cluster DNS forms) resolves to its cluster IP inside the pods.
    hosts = (NETNS_ETC / dev.cluster.pods[GATEWAY_PODS[0]].netns / "hosts").read_text()  # type: ignore[operator]
    for name, address in dev.cluster.cluster_ips.items():
        assert f"{address} {name}.outrider.svc.cluster.local" in hosts
    for name in GATEWAY_PODS:
        events = [text.split(" (pid")[0] for _, text in dev.cluster.pods[name].events]
        assert [e for e in events if e.startswith("started ") or e.endswith("startup probe passed")] == [
            "started ext-authz", "ext-authz startup probe passed", "started ratelimit",
            "ratelimit startup probe passed", "started ext-proc", "ext-proc startup probe passed", "started envoy"]
    # Load ran while the gateway pods started: nothing was sent before one was ready, nothing sent failed.
    assert dev.load.result.not_sent > 0
    assert dev.load.result.failed == 0, dev.load.result.errors


def test_the_walkthrough_through_the_gateway_service(dev: Dev) -> None:
    # The dev overlay's JWKS is the public half of examples/keys (DEVELOPMENT ONLY), so its tokens are accepted.
    jwks = json.loads(find(dev.docs, "Secret", "outrider-jwt")["stringData"]["jwks.json"])
    example = json.loads((KEYS_DIR / "jwks.json").read_text())
    assert [k["n"] for k in jwks["keys"]] == [k["n"] for k in example["keys"]]
    with dev.gateway() as gateway:
        assert gateway.get("/health/live").status_code == 200
        public = counted(gateway, PUBLIC_PATH)
        assert public.status_code == 200 and public.json()["path"] == PUBLIC_PATH  # the demo upstream pod answered
        assert "ratelimit-limit" in public.headers and "ratelimit-remaining" in public.headers
        assert gateway.get("/api/v1/users/profile").status_code == 401
        seen = counted(gateway, "/api/v1/users/profile", {"Authorization": f"Bearer {dev.token('alice')}"})
        assert seen.status_code == 200 and seen.json()["headers"]["x-user-id"] == "alice"
        assert int(seen.headers["ratelimit-remaining"]) < int(seen.headers["ratelimit-limit"].split(",")[0])


def counted(gateway: httpx.Client, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """A GET the rate limiter answered within its budget: past the overlay's 20 ms it lets the request through
    without RateLimit headers (failure_mode: allow), seen now and then on the shared 2-core machine; asked
    again then (3 tries)."""
    for _ in range(3):
        response = gateway.get(path, headers=headers)
        if "ratelimit-remaining" in response.headers:
            break
    return response


def test_one_limit_across_both_gateway_pods(dev: Dev) -> None:
    """The shared Redis: a free-tier user's requests, each on a new connection so the Service alternates the
    pods, spend one quota."""
    misses = []
    for _ in range(3):
        while time.time() % 60 > 50:  # the free tier's window is a minute: all requests inside one
            time.sleep(0.5)
        auth = {"Authorization": f"Bearer {dev.token(f'free-{uuid.uuid4().hex[:6]}')}", "Connection": "close"}
        before = dev.gateway_connections()
        with dev.gateway() as gateway:
            responses = [gateway.get("/api/v1/users/me", headers=auth) for _ in range(8)]
        assert [r.status_code for r in responses] == [200] * 8
        missed = [i for i, r in enumerate(responses) if "ratelimit-remaining" not in r.headers]
        if not missed:
            break
        # No RateLimit headers: the rate limiter answered past the overlay's budget_ms (20 ms) and let the
        # request through (failure_mode: allow). Seen now and then on the shared 2-core machine; the sequence
        # is run again with a fresh user, and the misses are printed.
        misses.append(missed)
    else:
        pytest.fail(f"RateLimit headers missing in every try {misses}: {dev.diagnosis()}")
    used = {pod: n - before[pod] for pod, n in dev.gateway_connections().items()}
    remaining = [int(r.headers["ratelimit-remaining"]) for r in responses]
    print(f"\none limit across both gateway pods: remaining {remaining}, connections per pod {used}, "
          f"tries with answers past the rate limiter's budget {misses}")
    assert min(used.values()) >= 3, f"the Service did not spread the connections over both pods: {used}"
    assert remaining == list(range(59, 51, -1)), "one counter in the shared Redis, decremented by both pods"


def test_a_control_plane_pod_killed_the_other_takes_changes(dev: Dev) -> None:
    """SIGKILL the containers of one control-plane pod: a route PUT through the control-plane Service is
    served through the gateway Service within seconds, and the constant load loses nothing meanwhile."""
    token = find(dev.docs, "Secret", ADMIN_TOKEN_SECRET)["stringData"]["token"]  # DEVELOPMENT ONLY
    victim = dev.cluster.pods[f"{CONTROL_PLANE}-0"]
    assert dev.cluster.proxy is not None  # some xDS clients (Envoy, sidecars) were sent to the victim
    assert dev.cluster.proxy.connections[(f"{CONTROL_PLANE}:18000", victim.spec.name)] > 0
    _, _, failed_before = dev.load.result.snapshot()
    started = time.monotonic()
    for state in victim.containers.values():
        assert state.proc is not None
        os.killpg(state.proc.pid, signal.SIGKILL)
    wait_for(lambda: not victim.ready, 5, "the killed pod stays ready")
    name = f"failover-{uuid.uuid4().hex[:6]}"
    admin = httpx.Client(base_url=dev.cluster.url(CONTROL_PLANE, 18001), trust_env=False, timeout=10,
                         headers={"Authorization": f"Bearer {token}", "Host": CONTROL_PLANE})
    with admin, dev.gateway() as gateway:
        put = admin.put(f"/v1/routes/{name}", json={"match": {"prefix": f"/api/v1/{name}/"}, "upstream": "demo",
                                                      "public": True})
        if put.status_code != 200:
            print(f"\nPUT answered {put.status_code}: {put.text}\n{dev.diagnosis()}\n"
                  f"{victim.log_tail('xds-server', 20)}\n--- the other ---\n"
                  f"{dev.cluster.pods[f'{CONTROL_PLANE}-1'].log_tail('xds-server', 20)}")
        assert put.status_code == 200, put.text
        accepted = time.monotonic()
        wait_for(lambda: gateway.get(f"/api/v1/{name}/x").status_code == 200, 10,
                 "the route PUT on the surviving control-plane pod never reached the gateway pods")
        live_s, after_put_s = time.monotonic() - started, time.monotonic() - accepted
        for _ in range(6):  # on both gateway pods (new connections alternate)
            assert gateway.get(f"/api/v1/{name}/x", headers={"Connection": "close"}).status_code == 200
    wait_for(lambda: victim.ready, 30, lambda: f"the killed control-plane pod was not restarted to ready: "
             f"{victim.events[-6:]}\n{victim.log_tail('xds-server', 15)}\nload errors {dict(dev.load.result.errors)}")
    _, _, failed_after = dev.load.result.snapshot()
    print(f"\ncontrol-plane pod SIGKILLed: route live through the gateway Service {live_s:.1f}s later "
          f"({after_put_s:.1f}s after the PUT was accepted); restarts "
          f"{victim.containers['xds-server'].restarts}; failed requests meanwhile {failed_after - failed_before}; "
          f"proxy loop late (> 0.2 s) {[round(late, 2) for _, late in dev.cluster.proxy.lags]}")
    assert failed_after == failed_before, dev.load.result.errors


def test_rolling_stop_of_a_gateway_pod_under_load_loses_nothing(dev: Dev) -> None:
    leaving, staying = (dev.cluster.pods[name] for name in GATEWAY_PODS)
    sent_before, _, failed_before = dev.load.result.snapshot()
    report: list[StopReport] = []
    stopper = threading.Thread(target=lambda: report.append(dev.cluster.stop_pod(GATEWAY_PODS[0])))
    stopper.start()
    wait_for(lambda: leaving.terminating, 5, "the pod never turned terminating")
    at_terminating = dev.gateway_connections()[GATEWAY_PODS[0]]
    stopper.join(60)
    time.sleep(1.0)  # the survivor carries the load alone for a moment
    result = dev.load.stop()
    stop = report[0]
    print(f"\nrolling stop of {GATEWAY_PODS[0]} under {dev.load.rate:.0f} req/s through the gateway Service: "
          f"sent {result.sent - sent_before} during the test ({result.sent} in all, {result.not_sent} not sent "
          f"while no gateway pod was ready), failed {result.failed} {dict(result.errors)}; stop took "
          f"{stop.duration_s:.1f}s (preStop {stop.pre_stop_s.get('envoy', 0):.1f}s), order {stop.order}; "
          f"connections per pod {dev.gateway_connections()}")
    assert result.failed == failed_before == 0, result.errors
    assert result.sent - sent_before >= 100
    assert dev.gateway_connections()[GATEWAY_PODS[0]] == at_terminating, "a terminating pod got a new connection"
    assert staying.ready
    assert stop.order == ["envoy", "ext-proc", "ratelimit", "ext-authz"]
    assert stop.killed == [] and set(stop.exit_codes.values()) == {0}
