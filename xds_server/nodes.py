"""Which ADS clients belong to the gateway (expected node ids) and which snapshot each one reads.

A service of a gateway connects as `<gateway node id>/<service>` (outrider.xds_client.service_node_id) and
reads the gateway's snapshot, subscribing to its own resource type only. A node that matches none of the
expected patterns is refused: it can neither read the config nor hold up or veto a change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from outrider.config.xds import XdsService
from xds_server.protocol import Node

SERVICE_SEPARATOR = "/"


@dataclass(frozen=True)
class NodePolicy:
    by_cluster: bool  # snapshots kept per node cluster (several Envoys of one cluster share one)
    gateway_id: str
    gateway_cluster: str
    patterns: tuple[str, ...]
    # With mTLS: certificate identity → the node id patterns it may claim; None = no client certificates.
    identities: Mapping[str, tuple[str, ...]] | None = None

    @classmethod
    def of(cls, settings: XdsService) -> NodePolicy:
        by_cluster = settings.node_key == "cluster"
        patterns = tuple(settings.expected_nodes) or (
            ("*",) if by_cluster else (settings.node_id, settings.node_id + SERVICE_SEPARATOR + "*"))
        identities = None
        if settings.tls is not None:
            identities = {name: tuple(nodes) for name, nodes in settings.tls.identities.items()}
        return cls(by_cluster, settings.node_id, settings.node_cluster, patterns, identities)

    @property
    def gateway_key(self) -> str:
        """The key the gateway's snapshot is stored under."""
        return self.gateway_cluster if self.by_cluster else self.gateway_id

    def key(self, node: Node) -> str:
        if self.by_cluster:
            return node.cluster
        # A service node reads its gateway's snapshot.
        return node.id.split(SERVICE_SEPARATOR, 1)[0]

    def admits(self, node: Node, peer: frozenset[str] = frozenset()) -> bool:
        """Whether `node` may open a stream; `peer` holds the client certificate's identities (mTLS)."""
        if not node.id or (self.by_cluster and node.cluster != self.gateway_cluster):
            return False
        if not any(fnmatchcase(node.id, pattern) for pattern in self.patterns):
            return False
        if self.identities is None:
            return True
        # A certificate may only claim the node ids its identity is granted (one gateway's certificate
        # cannot pose as another gateway, nor as a service of it unless granted).
        return any(fnmatchcase(node.id, pattern) for name in peer for pattern in self.identities.get(name, ()))
