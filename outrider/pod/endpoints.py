"""Services as kube-proxy sees them (pure): their ports, the pods behind them, which one gets a new connection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from outrider.pod.spec import SpecError


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target: int | str  # targetPort: a number, or the name of a container port of the backing pods


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    namespace: str
    selector: tuple[tuple[str, str], ...]
    ports: tuple[ServicePort, ...]

    @property
    def dns_names(self) -> tuple[str, ...]:
        """The names a pod's resolver finds it by (cluster DNS with the pod's search domains)."""
        return (self.name, f"{self.name}.{self.namespace}", f"{self.name}.{self.namespace}.svc",
                f"{self.name}.{self.namespace}.svc.cluster.local")


@dataclass(frozen=True)
class Endpoint:
    pod: str
    ip: str
    port: int


def parse_service(doc: Mapping[str, Any], where: str = "service") -> ServiceSpec:
    """A v1 Service (ClusterIP, TCP ports); errors name the field."""
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{where}.metadata.name: missing")
    where = f"{where}({name})"
    kind = spec.get("type", "ClusterIP")
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise SpecError(f"{where}.spec.type: {kind!r} is not supported here (ClusterIP only)")
    if spec.get("clusterIP") == "None":
        raise SpecError(f"{where}.spec.clusterIP: headless Services (None) are not supported here")
    selector = spec.get("selector") or {}
    if not isinstance(selector, Mapping):
        raise SpecError(f"{where}.spec.selector: expected a mapping")
    ports: list[ServicePort] = []
    for i, p in enumerate(spec.get("ports") or []):
        at = f"{where}.spec.ports[{i}]"
        if not isinstance(p, Mapping) or not isinstance(p.get("port"), int) or not 0 < p["port"] < 65536:
            raise SpecError(f"{at}.port: expected a port number")
        if p.get("protocol", "TCP") != "TCP":
            raise SpecError(f"{at}.protocol: only TCP is proxied here, got {p.get('protocol')!r}")
        target = p.get("targetPort", p["port"])
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        if not isinstance(target, (int, str)) or target in ("", 0):
            raise SpecError(f"{at}.targetPort: expected a port number or a container port name, got {target!r}")
        ports.append(ServicePort(str(p.get("name", "")), int(p["port"]), target))
    return ServiceSpec(name=name, namespace=str(meta.get("namespace", "default")),
                       selector=tuple(sorted((str(k), str(v)) for k, v in selector.items())), ports=tuple(ports))


def selects(selector: Sequence[tuple[str, str]], labels: Mapping[str, str]) -> bool:
    """A Service without a selector selects no pod (its endpoints are managed by hand in Kubernetes)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector)


def target_port(port: ServicePort, container_ports: Sequence[tuple[str, int]]) -> int | None:
    """The pod port a Service port forwards to; a named targetPort the pod does not declare: None (not an
    endpoint for this port, as the endpoints controller leaves it out)."""
    if isinstance(port.target, int):
        return port.target
    return next((number for name, number in container_ports if name == port.target), None)


class RoundRobin:
    """Which endpoint a new connection tries first, then next: kube-proxy's userspace round robin (a failed
    connect moves on to the next endpoint)."""

    def __init__(self) -> None:
        self._next = 0

    def order(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        if not endpoints:
            return []
        # Sorted, so the rotation does not depend on the order pods happen to be listed in.
        ranked = sorted(endpoints, key=lambda e: (e.pod, e.ip, e.port))
        start = self._next % len(ranked)
        self._next = start + 1
        return ranked[start:] + ranked[:start]
