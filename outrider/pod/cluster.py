"""A local stand-in for a cluster: one pod network, the API objects (ConfigMaps, Secrets), pods and Services.

A Service gets a cluster IP on the bridge where the Service proxy (kube-proxy's userspace mode) listens;
its names resolve to it in every pod. Workloads start with their replicas, backends first.
`close()` stops every pod and removes the network.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from outrider.pod.endpoints import Endpoint, ServiceSpec, parse_service, selects, target_port
from outrider.pod.network import PodNetwork
from outrider.pod.runner import Pod, PodError
from outrider.pod.service_proxy import ServiceProxy
from outrider.pod.spec import WORKLOADS_WITH_TEMPLATE, ObjectStore, PodSpec, SpecError, parse_pod
from outrider.pod.workloads import Workload, start_order, workload

WORKDIR_PARENT = "/var/tmp"  # noqa: S108 - mkdtemp makes a private dir; not /tmp: a pod may mount an emptyDir at /tmp, which would hide its volumes


def load_documents(paths: Iterable[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    """Every YAML document of the files, as (where, document); `where` names the file and document index."""
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        try:
            # "-": standard input (`kubectl kustomize deploy/kubernetes/overlays/dev | outrider pod -`)
            text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
            loaded = list(yaml.safe_load_all(text))
        except (OSError, yaml.YAMLError) as exc:
            raise SpecError(f"{path}: {exc}") from None
        for i, doc in enumerate(loaded):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc:
                raise SpecError(f"{path}[{i}]: not a Kubernetes object (no kind)")
            docs.append((f"{path}[{i}]", doc))
    return docs


class LocalCluster:
    """Pods in network namespaces on one bridge; use as a context manager (cleanup also on failure)."""

    def __init__(self, prefix: str = "orp", workdir: Path | None = None,
                 on_event: Callable[[str], None] | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=WORKDIR_PARENT))
        self.network = PodNetwork(prefix=prefix)
        self.objects = ObjectStore()
        self.pods: dict[str, Pod] = {}
        self.services: dict[str, ServiceSpec] = {}
        self.cluster_ips: dict[str, str] = {}  # Service name → its virtual IP
        self.proxy: ServiceProxy | None = None
        self.on_event = on_event
        self._lock = threading.Lock()  # replicas start from threads of their own

    def __enter__(self) -> LocalCluster:
        self.network.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_objects(self, docs: Iterable[tuple[str, Mapping[str, Any]]]) -> list[tuple[str, Mapping[str, Any]]]:
        """Take the ConfigMaps, Secrets and Services; return the workloads (Pods, Deployments...) left.
        Namespaces, HPAs, PDBs, NetworkPolicies... are not enforced here (docs/pod-harness.md)."""
        workloads = []
        for where, doc in docs:
            kind = doc.get("kind")
            if kind in ("ConfigMap", "Secret"):
                self.objects.add(doc, where)
            elif kind == "Service":
                self.add_service(parse_service(doc, where))
            elif kind == "Pod" or kind in WORKLOADS_WITH_TEMPLATE:
                workloads.append((where, doc))
        return workloads

    def add_service(self, service: ServiceSpec) -> str:
        """Give the Service a cluster IP, its names in every pod's hosts file, a proxy listener per port."""
        if service.name in self.services:
            raise SpecError(f"Service {service.name!r} is given twice")
        if self.proxy is None:
            self.proxy = ServiceProxy(self.endpoints)
        address = self.network.add_cluster_ip()
        self.services[service.name] = service
        self.cluster_ips[service.name] = address
        for port in service.ports:
            self.proxy.listen(f"{service.name}:{port.port}", address, port.port)
        for name in service.dns_names:
            self.network.set_host(name, address)
        if self.on_event is not None:
            self.on_event(f"service {service.name} at {address} ports {[p.port for p in service.ports]}")
        return address

    def endpoints(self, key: str) -> list[Endpoint]:
        """The ready endpoints of "<service>:<port>" right now (the EndpointSlice's ready addresses)."""
        name, _, number = key.rpartition(":")
        service = self.services[name]
        port = next(p for p in service.ports if p.port == int(number))
        found = []
        for pod_name, pod in list(self.pods.items()):
            if not pod.ready or not selects(service.selector, dict(pod.spec.labels)):
                continue
            target = target_port(port, [p for c in pod.spec.containers for p in c.ports])
            if target is not None:
                found.append(Endpoint(pod_name, pod.ip, target))
        return found

    def url(self, service: str, port: int | None = None, scheme: str = "http") -> str:
        """The Service's address as the host (a test) calls it: its cluster IP and a Service port."""
        spec = self.services[service]
        return f"{scheme}://{self.cluster_ips[service]}:{port or spec.ports[0].port}"

    def plan(self, workloads: Iterable[tuple[str, Mapping[str, Any]]]) -> list[Workload]:
        """The workloads in start order (backends of a Service before the workloads that call it)."""
        return start_order([workload(doc, where) for where, doc in workloads], list(self.services.values()),
                           self.objects)

    def start_workloads(self, plan: Iterable[Workload], ready_timeout_s: float = 120.0,
                        stop: threading.Event | None = None) -> list[Pod]:
        """Each workload's replicas start together (as its ReplicaSet creates them) and are all ready before
        the next workload starts."""
        started: list[Pod] = []
        for item in plan:
            if stop is not None and stop.is_set():
                break
            spec = self.pod_spec(item.doc, item.where)
            errors: list[BaseException] = []

            def one(name: str, spec: PodSpec = spec, errors: list[BaseException] = errors) -> None:
                try:
                    self.start_pod(spec, name=name, timeout_s=ready_timeout_s).wait_ready(ready_timeout_s)
                except BaseException as exc:  # reported from the caller's thread
                    errors.append(exc)

            threads = [threading.Thread(target=one, args=(name,), name=f"start-{name}") for name in item.pod_names]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0] if isinstance(errors[0], (PodError, SpecError)) else PodError(str(errors[0]))
            started.extend(self.pods[name] for name in item.pod_names)
        return started

    def pod_spec(self, doc: Mapping[str, Any], where: str = "pod") -> PodSpec:
        return parse_pod(doc, self.objects, where)

    def start_pod(self, spec: PodSpec, name: str | None = None, timeout_s: float = 120.0) -> Pod:
        """Give the pod a namespace and an address, start its containers in order; returns once they started."""
        name = name or spec.name
        spec = dataclasses.replace(spec, name=name)  # a replica's own name (events, HOSTNAME)
        if name in self.pods:
            raise SpecError(f"a pod named {name!r} already runs")
        with self._lock:
            ns, ip = self.network.add_pod(name)
            pod = Pod(spec, self.workdir / name, netns=ns, ip=ip, on_event=self.on_event)
            self.pods[name] = pod
        pod.start(timeout_s)
        return pod

    def stop_pod(self, name: str, grace_s: float | None = None) -> Any:
        pod = self.pods[name]
        report = pod.stop(grace_s)
        self.network.remove_pod(name)
        del self.pods[name]
        return report

    def close(self, keep_workdir: bool = False) -> None:
        """Stop every pod, remove the network; remove the work directory (logs, volumes) if it made it."""
        try:
            for name in list(self.pods):
                try:
                    self.stop_pod(name, grace_s=5.0)
                except Exception:  # cleanup goes on for the other pods and the network
                    self.network.remove_pod(name)
        finally:
            if self.proxy is not None:
                self.proxy.close()
            self.network.close()
            if self._own_workdir and not keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
