"""Acceptance: the gateway pod run locally — admitted only once every probe passes, and a rolling stop of one of
two gateway pods under constant load loses no request. Needs root and iproute2 (skipped otherwise)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from outrider.devtoken import mint_dev_token
from outrider.pod.cluster import LocalCluster
from outrider.pod.network import leftovers, unavailable_reason
from outrider.pod.runner import Pod, StopReport
from tests.harness import KEYS_DIR
from tests.pod import manifests
from tests.pod.loadgen import LoadGenerator, Service

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))

GATEWAYS = ("gateway-a", "gateway-b")
PUBLIC_PATH = "/api/v1/public/hello"


def dev_token() -> str:
    """DEVELOPMENT ONLY: a token signed with the published example key (examples/keys)."""
    provider = manifests.gateway_config(control_plane=False)["auth"]["providers"][0]
    return mint_dev_token(KEYS_DIR, provider["issuer"], provider["audiences"][0], subject="alice", roles=["user"],
                          tier="free", ttl_s=600)


class Watch:
    """Samples a starting pod every 20 ms: was it ever reported ready while some container was not?"""

    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self.violations: list[str] = []
        self.ready_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            containers = {n: c.ready for n, c in self.pod.containers.items()}
            if self.pod.ready:
                self.ready_at = self.ready_at or time.monotonic()
                if not all(containers.values()):
                    self.violations.append(f"pod ready while {containers}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


Cluster = tuple[LocalCluster, dict[str, Watch], LoadGenerator]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Control plane and demo upstream pods, then the two gateway pods — with the load already running through
    the gateway "Service" while they start, so a request sent before a pod is ready would show as a failure."""
    local = LocalCluster(prefix="orp")
    load: LoadGenerator | None = None
    try:
        local.network.create()
        local.add_objects([("fixture", doc) for doc in manifests.objects()])
        for doc in (manifests.control_plane_deployment(), manifests.demo_upstream_pod()):
            local.start_pod(local.pod_spec(doc)).wait_ready(60)
        spec = local.pod_spec(manifests.gateway_deployment())
        watches: dict[str, Watch] = {}
        errors: list[BaseException] = []

        def start(name: str) -> None:
            try:
                local.start_pod(spec, name=name, timeout_s=90)
            except BaseException as exc:  # reported below, from the test's thread
                errors.append(exc)

        service = Service(lambda: [p for name, p in local.pods.items() if name in GATEWAYS], manifests.LISTENER_PORT)
        load = LoadGenerator(service, PUBLIC_PATH, rate=60).start()
        # The Deployment's two replicas start together, as a ReplicaSet would create them.
        threads = [threading.Thread(target=start, args=(name,)) for name in GATEWAYS]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads) and len(watches) < len(GATEWAYS):
            for name in GATEWAYS:
                if name in local.pods and name not in watches:
                    watches[name] = Watch(local.pods[name])
            time.sleep(0.01)
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        for name in GATEWAYS:
            watches.setdefault(name, Watch(local.pods[name]))
        yield local, watches, load
    finally:
        if load is not None:
            load.stop()
        local.close()
        assert leftovers("orp", local.network.run_id) == [], "network namespaces or links left behind"


def test_gateway_pod_starts_in_kubernetes_order_and_is_ready_only_when_every_probe_passes(cluster: Cluster) -> None:
    local, watches, load = cluster
    for name in GATEWAYS:
        pod = local.pods[name]
        pod.wait_ready(60)
        watches[name].stop()
        assert watches[name].violations == []
        # Native sidecars one at a time, each after the previous one's startup probe passed; Envoy last.
        events = [text for _, text in pod.events]
        order = [e for e in events if e.startswith("started ") or e.endswith("startup probe passed")]
        assert [e.split(" (pid")[0] for e in order] == [
            "started ext-authz", "ext-authz startup probe passed",
            "started ratelimit", "ratelimit startup probe passed",
            "started ext-proc", "ext-proc startup probe passed",
            "started envoy"]
        # Ready (what the Service admits traffic on) came only after Envoy's own readiness probe passed,
        # which is after every sidecar was ready.
        times = {text.split(" (pid")[0]: at for at, text in pod.events}
        assert times["ready"] >= times["envoy ready"] >= times["started envoy"]
        with httpx.Client(base_url=f"http://{pod.ip}:{manifests.LISTENER_PORT}", trust_env=False) as client:
            assert client.get("/health/ready").status_code == 200
            assert client.get(PUBLIC_PATH).json()["path"] == PUBLIC_PATH  # the demo upstream pod answered
            # The walkthrough's protected route: ext_authz (a sidecar, its keys from the Secret) decides.
            assert client.get("/api/v1/users/profile").status_code == 401
            seen = client.get("/api/v1/users/profile", headers={"Authorization": f"Bearer {dev_token()}"})
            assert seen.status_code == 200 and seen.json()["headers"]["x-user-id"] == "alice"
    # The load ran all along: while no gateway pod was ready the Service had nowhere to send (not_sent), and
    # nothing it did send failed — no pod got traffic before every probe of it passed.
    assert load.result.not_sent > 0
    assert load.result.failed == 0, load.result.errors
    deadline = time.monotonic() + 5
    while load.result.ok == 0:  # and the ready pods do get it
        assert time.monotonic() < deadline, "no request answered although the pods are ready"
        time.sleep(0.05)


def test_rolling_stop_under_load_loses_no_request(cluster: Cluster) -> None:
    local, _, load = cluster
    a, b = (local.pods[name] for name in GATEWAYS)
    for pod in (a, b):
        pod.wait_ready(60)
    before = load.result.by_pod.copy()
    deadline = time.monotonic() + 10
    while min(load.result.by_pod[a.ip] - before[a.ip], load.result.by_pod[b.ip] - before[b.ip]) < 20:
        assert time.monotonic() < deadline, "the Service does not send to both ready pods"
        time.sleep(0.05)

    report: list[StopReport] = []
    stopper = threading.Thread(target=lambda: report.append(local.stop_pod(GATEWAYS[0])))
    stopper.start()
    # preStop is `outrider drain`: /health/ready turns 503 (load balancers stop sending) while normal requests
    # on the draining pod are still served.
    with httpx.Client(base_url=f"http://{a.ip}:{manifests.LISTENER_PORT}", trust_env=False, timeout=2) as client:
        deadline = time.monotonic() + 10
        while client.get("/health/ready").status_code != 503:
            assert time.monotonic() < deadline, "/health/ready never turned 503 during the drain"
            time.sleep(0.05)
        assert client.get(PUBLIC_PATH).status_code == 200
    served_by = load.result.by_pod.copy()  # a is terminating: the Service sends it nothing from here on
    stopper.join(60)
    time.sleep(1.0)  # the survivor carries the load alone for a moment
    result = load.stop()
    stop = report[0]
    not_sent_at_start = result.not_sent
    print(f"\nstart and rolling stop under {load.rate:.0f} req/s: sent {result.sent}, not sent {not_sent_at_start} "
          f"(no ready pod yet), ok {result.ok}, failed {result.failed} "
          f"{dict(result.errors)}, per pod {dict(result.by_pod)}; stop took {stop.duration_s:.1f}s "
          f"(preStop {stop.pre_stop_s.get('envoy', 0):.1f}s), order {stop.order}")
    assert result.failed == 0, result.errors
    assert result.sent >= 100
    assert result.by_pod[a.ip] == served_by[a.ip]
    assert result.by_pod[b.ip] - served_by[b.ip] >= 60  # b carried the load alone during the drain and after
    assert stop.order == ["envoy", "ext-proc", "ratelimit", "ext-authz"]
    assert stop.killed == [] and set(stop.exit_codes.values()) == {0}
    assert stop.pre_stop_s["envoy"] < stop.duration_s < manifests.gateway_deployment()["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
