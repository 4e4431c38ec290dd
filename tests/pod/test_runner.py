"""The runner's stop sequence with small shell containers: preStop inside the container, SIGTERM main then the
sidecars in reverse, SIGKILL at the end of the grace period; volumes shared through the pod's mounts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outrider.pod.cluster import LocalCluster
from outrider.pod.network import PodNetwork, leftovers, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))

# Each container appends to /tmp/log, an emptyDir the pod's containers share (the host's /tmp is not it).
LOOP = "while :; do sleep 0.05; done"


def container(name: str, on_term: str | None, **extra: Any) -> dict[str, Any]:
    trap = f"trap 'echo {name}-term >> /tmp/log; exit 0' TERM" if on_term == "exit" else "trap '' TERM"
    return {"name": name, "command": ["sh", "-c", f"{trap}; echo {name}-start >> /tmp/log; {LOOP}"],
            "volumeMounts": [{"name": "shared", "mountPath": "/tmp"}], **extra}


def pod(name: str, main_on_term: str, grace: int) -> dict[str, Any]:
    def started(who: str) -> dict[str, Any]:
        return {"exec": {"command": ["grep", "-q", f"{who}-start", "/tmp/log"]}, "periodSeconds": 1}

    return {"kind": "Pod", "metadata": {"name": name}, "spec": {
        "terminationGracePeriodSeconds": grace,
        "initContainers": [
            container("side-a", "exit", restartPolicy="Always", startupProbe=started("side-a")),
            container("side-b", "exit", restartPolicy="Always", startupProbe=started("side-b")),
        ],
        "containers": [container("main", main_on_term, lifecycle={
            "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /tmp/log"]}}})],
        "volumes": [{"name": "shared", "emptyDir": {}}],
    }}


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster(prefix="orp")
    try:
        local.network.create()
        yield local
    finally:
        local.close()
        assert leftovers("orp", local.network.run_id) == []


def shared_log(local: LocalCluster, name: str) -> list[str]:
    path = local.pods[name].workdir / "volumes" / "shared" / "log"
    return path.read_text().split() if path.exists() else []


def wait_for_main(local: LocalCluster, name: str) -> None:
    """Ready has no probe here: wait until main's shell has set its trap (it logs right after)."""
    deadline = time.monotonic() + 10
    while "main-start" not in shared_log(local, name):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_stop_runs_pre_stop_then_terms_main_then_sidecars_in_reverse(cluster: LocalCluster) -> None:
    running = cluster.start_pod(cluster.pod_spec(pod("polite", "exit", grace=10)))
    running.wait_ready(10)
    wait_for_main(cluster, "polite")
    report = running.stop()
    log = shared_log(cluster, "polite")
    assert log == ["side-a-start", "side-b-start", "main-start", "prestop", "main-term", "side-b-term", "side-a-term"]
    assert report.order == ["main", "side-b", "side-a"]
    assert report.killed == []
    assert report.duration_s < 5


def test_grace_period_ends_in_sigkill(cluster: LocalCluster) -> None:
    running = cluster.start_pod(cluster.pod_spec(pod("stubborn", "ignore", grace=2)))
    running.wait_ready(10)
    wait_for_main(cluster, "stubborn")
    started = time.monotonic()
    report = running.stop()
    assert 2 <= time.monotonic() - started < 5
    # main ignores SIGTERM, so the sidecars never got theirs before the grace period ran out: all SIGKILLed.
    assert sorted(report.killed) == ["main", "side-a", "side-b"]
    log = shared_log(cluster, "stubborn")
    assert "prestop" in log and "side-a-term" not in log


def test_a_killed_runs_leftovers_are_swept_by_the_next_run() -> None:
    stale = PodNetwork(prefix="orp").create()
    stale.add_pod("x")
    assert stale._alive is not None
    stale._alive.close()  # as if its process had been SIGKILLed: the lock is gone, nothing was removed
    assert len(leftovers("orp", stale.run_id)) == 3  # namespace, bridge, veth
    fresh = PodNetwork(prefix="orp")
    try:
        fresh.create()
        assert leftovers("orp", stale.run_id) == []
        assert len(leftovers("orp", fresh.run_id)) == 1  # a live run is left alone (its bridge)
    finally:
        fresh.close()
        stale._alive = None
        stale.close()


def test_a_container_that_exits_or_fails_liveness_is_restarted(cluster: LocalCluster) -> None:
    # Exits at its first start; at its second it runs, then fails its liveness probe once /tmp/sick exists.
    script = ("if [ ! -f /tmp/once ]; then touch /tmp/once; exit 1; fi; "
              f"echo main-start >> /tmp/log; {LOOP}")
    doc = {"kind": "Pod", "metadata": {"name": "flaky"}, "spec": {
        "terminationGracePeriodSeconds": 2,
        "containers": [{"name": "main", "command": ["sh", "-c", script],
                        "volumeMounts": [{"name": "shared", "mountPath": "/tmp"}],
                        "livenessProbe": {"exec": {"command": ["sh", "-c", "! test -f /tmp/sick"]},
                                          "periodSeconds": 1, "failureThreshold": 1}}],
        "volumes": [{"name": "shared", "emptyDir": {}}]}}
    running = cluster.start_pod(cluster.pod_spec(doc))
    wait_for_main(cluster, "flaky")
    assert running.containers["main"].restarts == 1
    (running.workdir / "volumes" / "shared" / "sick").touch()
    deadline = time.monotonic() + 10
    while running.containers["main"].restarts < 2:
        assert time.monotonic() < deadline, running.events
        time.sleep(0.05)
    assert any("liveness probe failed" in text for _, text in running.events)


def test_the_bridge_keeps_its_mac_as_pods_join() -> None:
    """Pods cache the MAC of the host's addresses on the bridge (the Services' cluster IPs): it must not follow
    the lowest port MAC as veths join, or Service traffic goes into another pod's veth."""
    network = PodNetwork(prefix="orp").create()
    try:
        def mac() -> str:
            return (Path("/sys/class/net") / network.bridge / "address").read_text().strip()

        before = mac()
        for name in ("mac-a", "mac-b", "mac-c", "mac-d"):
            network.add_pod(name)
        assert mac() == before
    finally:
        network.close()
        assert leftovers("orp", network.run_id) == []
