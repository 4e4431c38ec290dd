"""A local stand-in for a cluster: one pod network, the API objects (ConfigMaps, Secrets), pods and Services.

A Service name resolves, in every pod, to the address of the first pod its selector matches (hosts files
have no virtual IPs; see docs/pod-harness.md). `close()` stops every pod and removes the network.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from outrider.pod.network import PodNetwork
from outrider.pod.runner import Pod
from outrider.pod.spec import WORKLOADS_WITH_TEMPLATE, ObjectStore, PodSpec, SpecError, parse_pod

WORKDIR_PARENT = "/var/tmp"  # noqa: S108 - mkdtemp makes a private dir; not /tmp: a pod may mount an emptyDir at /tmp, which would hide its volumes


def load_documents(paths: Iterable[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    """Every YAML document of the files, as (where, document); `where` names the file and document index."""
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        try:
            loaded = list(yaml.safe_load_all(Path(path).read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise SpecError(f"{path}: {exc}") from None
        for i, doc in enumerate(loaded):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc:
                raise SpecError(f"{path}[{i}]: not a Kubernetes object (no kind)")
            docs.append((f"{path}[{i}]", doc))
    return docs


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class LocalCluster:
    """Pods in network namespaces on one bridge; use as a context manager (cleanup also on failure)."""

    def __init__(self, prefix: str = "orp", workdir: Path | None = None,
                 on_event: Callable[[str], None] | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=WORKDIR_PARENT))
        self.network = PodNetwork(prefix=prefix)
        self.objects = ObjectStore()
        self.pods: dict[str, Pod] = {}
        self.services: dict[str, dict[str, str]] = {}  # name → selector
        self.on_event = on_event

    def __enter__(self) -> LocalCluster:
        self.network.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_objects(self, docs: Iterable[tuple[str, Mapping[str, Any]]]) -> list[tuple[str, Mapping[str, Any]]]:
        """Take the ConfigMaps, Secrets and Services; return the workloads (Pods, Deployments...) left."""
        workloads = []
        for where, doc in docs:
            kind = doc.get("kind")
            if kind in ("ConfigMap", "Secret"):
                self.objects.add(doc, where)
            elif kind == "Service":
                selector = (doc.get("spec") or {}).get("selector") or {}
                self.add_service(str(doc["metadata"]["name"]), {str(k): str(v) for k, v in selector.items()})
            elif kind == "Pod" or kind in WORKLOADS_WITH_TEMPLATE:
                workloads.append((where, doc))
        return workloads

    def add_service(self, name: str, selector: Mapping[str, str]) -> None:
        self.services[name] = dict(selector)
        self._resolve_services()

    def _resolve_services(self) -> None:
        for name, selector in self.services.items():
            for pod in self.pods.values():
                if _selects(selector, dict(pod.spec.labels)) and not pod.terminating:
                    self.network.set_host(name, pod.ip)
                    break

    def pod_spec(self, doc: Mapping[str, Any], where: str = "pod") -> PodSpec:
        return parse_pod(doc, self.objects, where)

    def start_pod(self, spec: PodSpec, name: str | None = None, timeout_s: float = 120.0) -> Pod:
        """Give the pod a namespace and an address, start its containers in order; returns once they started."""
        name = name or spec.name
        if name in self.pods:
            raise SpecError(f"a pod named {name!r} already runs")
        ns, ip = self.network.add_pod(name)
        pod = Pod(spec, self.workdir / name, netns=ns, ip=ip, on_event=self.on_event)
        self.pods[name] = pod
        self._resolve_services()
        pod.start(timeout_s)
        return pod

    def stop_pod(self, name: str, grace_s: float | None = None) -> Any:
        pod = self.pods[name]
        report = pod.stop(grace_s)
        self.network.remove_pod(name)
        del self.pods[name]
        self._resolve_services()
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
            self.network.close()
            if self._own_workdir and not keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
