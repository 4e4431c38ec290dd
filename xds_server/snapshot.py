"""Snapshots: one consistent set of xDS resources per version; the consistency check run before any push."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
# Push order that never leaves anything warming: a listener's routes and a route's clusters exist first.
ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
SHORT = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds"}


def short(type_url: str) -> str:
    """cds/eds/lds/rds for Envoy's types, the message name for the services' (…v1.ExtProcConfig → ExtProcConfig)."""
    return SHORT.get(type_url) or type_url.rsplit(".", 1)[-1]


def rank(type_url: str) -> int:
    """Push order: the services' resources first (a service has a version before Envoy routes by it), then
    Envoy's in ORDER."""
    return ORDER.index(type_url) if type_url in SHORT else -1
# Types whose SotW request lists no names because Envoy wants them all.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})


def digest(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=8).hexdigest()


@dataclass(frozen=True)
class Resource:
    """One serialized resource; `version` is a content hash, `refs` the (type, name) it depends on."""

    name: str
    body: bytes
    version: str
    refs: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def of(cls, name: str, body: bytes, refs: frozenset[tuple[str, str]] = frozenset()) -> Resource:
        return cls(name, body, digest(body), refs)


@dataclass(frozen=True)
class Snapshot:
    """Every resource of one config version, by type URL then name.

    `type_versions` is the snapshot version at which each type last changed, so an unchanged type keeps
    its version (and is not pushed again).
    """

    version: str
    resources: Mapping[str, Mapping[str, Resource]]
    type_versions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls, version: str, resources: Mapping[str, Mapping[str, Resource]], previous: Snapshot | None = None
    ) -> Snapshot:
        type_versions = {}
        types = _types(resources)
        for type_url in types:
            current = resources.get(type_url, {})
            if previous is not None and _same(previous.resources.get(type_url, {}), current):
                type_versions[type_url] = previous.type_versions.get(type_url, previous.version)
            else:
                type_versions[type_url] = version
        return cls(version, {t: dict(resources.get(t, {})) for t in types}, type_versions)

    @property
    def types(self) -> tuple[str, ...]:
        """Every type of this snapshot in push order."""
        return _types(self.resources)

    def type_version(self, type_url: str) -> str:
        return self.type_versions.get(type_url, self.version)

    def get(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, {})

    def inconsistencies(self) -> list[str]:
        """Every dangling reference: listener → routes/cluster, route → cluster, EDS cluster → endpoints."""
        problems = []
        for type_url in self.types:
            for resource in self.get(type_url).values():
                for ref_type, ref_name in sorted(resource.refs):
                    if ref_name not in self.get(ref_type):
                        problems.append(
                            f"{short(type_url)} resource {resource.name!r} refers to "
                            f"{short(ref_type)} resource {ref_name!r}, which does not exist"
                        )
        return problems

    def consistent(self) -> bool:
        return not self.inconsistencies()

    def counts(self) -> dict[str, int]:
        return {short(t): len(self.get(t)) for t in self.types}


def _types(resources: Mapping[str, object]) -> tuple[str, ...]:
    return tuple(sorted({*ORDER, *resources}, key=lambda t: (rank(t), t)))


def _same(a: Mapping[str, Resource], b: Mapping[str, Resource]) -> bool:
    return a.keys() == b.keys() and all(a[name].version == b[name].version for name in a)
