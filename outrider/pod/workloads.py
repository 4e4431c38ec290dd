"""Which pods the workloads make and in what order (pure): replicas; Services' backends before their callers."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from outrider.pod.endpoints import ServiceSpec, selects
from outrider.pod.spec import ObjectStore, SpecError, pod_template


@dataclass(frozen=True)
class Workload:
    name: str
    where: str
    doc: Mapping[str, Any]
    replicas: int

    @property
    def pod_names(self) -> list[str]:
        """A bare Pod keeps its name; a workload's pods are <name>-0, <name>-1... (a ReplicaSet would add a
        random suffix; an index keeps logs and namespaces readable)."""
        if self.doc.get("kind") == "Pod":
            return [self.name]
        return [f"{self.name}-{i}" for i in range(self.replicas)]


def workload(doc: Mapping[str, Any], where: str) -> Workload:
    name, _, _ = pod_template(doc, where)
    replicas = 1
    if doc.get("kind") in ("Deployment", "StatefulSet", "ReplicaSet"):
        replicas = (doc.get("spec") or {}).get("replicas", 1)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise SpecError(f"{where}.spec.replicas: expected an integer >= 0, got {replicas!r}")
    return Workload(name, where, doc, replicas)


def _referenced_text(doc: Mapping[str, Any], objects: ObjectStore, where: str) -> str:
    """The pod template and every ConfigMap / Secret it reads (volumes, env, envFrom): where a Service name
    it calls would be written."""
    _, _, spec = pod_template(doc, where)
    parts = [yaml.safe_dump(dict(spec))]
    text = parts[0]
    for name, data in {**objects.config_maps, **objects.secrets}.items():
        if re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", text):
            parts.extend(v.decode(errors="replace") for v in data.values())
    return "\n".join(parts)


def _calls(text: str, service: ServiceSpec, with_port: bool = False) -> bool:
    """The Service's name as a word; `with_port`: as an address, `name[.namespace...]:port` (a certain call,
    where a bare name may be a comment or a label)."""
    name = rf"(?<![\w.-]){re.escape(service.name)}"
    if not with_port:
        return re.search(rf"{name}(?![\w-])", text) is not None
    ports = "|".join(str(p.port) for p in service.ports) or "0"
    return re.search(rf"{name}(?:\.[\w.-]+)?:(?:{ports})(?!\d)", text) is not None


def start_order(workloads: Sequence[Workload], services: Sequence[ServiceSpec], objects: ObjectStore) -> list[Workload]:
    """Backends first: a workload starts after the workloads behind every Service whose name appears in its
    template or the ConfigMaps/Secrets it reads (a name can also appear in a comment: harmless unless it
    makes a cycle). A cycle is broken by starting first the workload with the fewest unstarted backends it
    calls as `name:port`, then the fewest named at all, then the order given."""
    labels = {w.name: {str(k): str(v) for k, v in (pod_template(w.doc, w.where)[1].get("labels") or {}).items()}
              for w in workloads}
    needs: dict[str, set[str]] = {}
    certain: dict[str, set[str]] = {}  # called as name:port
    for w in workloads:
        text = _referenced_text(w.doc, objects, w.where)
        for table, with_port in ((needs, False), (certain, True)):
            table[w.name] = {b.name for s in services if _calls(text, s, with_port)
                             for b in workloads if b.name != w.name and selects(s.selector, labels[b.name])}
    order: list[Workload] = []
    left = list(workloads)
    while left:
        started = {w.name for w in order}
        free = [w for w in left if needs[w.name] <= started]
        chosen = free[0] if free else min(left, key=lambda w: (len(certain[w.name] - started),
                                                                len(needs[w.name] - started)))
        order.append(chosen)
        left.remove(chosen)
    return order
