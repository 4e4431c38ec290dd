"""Plain values exchanged with the stream state machines (no protobuf here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xds_server.snapshot import Resource


@dataclass(frozen=True)
class Node:
    id: str
    cluster: str = ""


@dataclass(frozen=True)
class SotwRequest:
    type_url: str
    version_info: str = ""
    nonce: str = ""
    names: tuple[str, ...] = ()
    error: str | None = None  # error_detail.message when the request is a NACK


@dataclass(frozen=True)
class SotwResponse:
    type_url: str
    version: str
    nonce: str
    resources: tuple[Resource, ...]
    snapshot_version: str


@dataclass(frozen=True)
class DeltaRequest:
    type_url: str
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    initial_versions: Mapping[str, str] = field(default_factory=dict)
    nonce: str = ""
    error: str | None = None


@dataclass(frozen=True)
class DeltaResponse:
    type_url: str
    system_version: str
    nonce: str
    resources: tuple[Resource, ...]
    removed: tuple[str, ...]
    snapshot_version: str


@dataclass(frozen=True)
class Ack:
    type_url: str
    nonce: str
    version: str  # the type version Envoy accepted
    snapshot_version: str  # the snapshot that response came from


@dataclass(frozen=True)
class Nack:
    type_url: str
    nonce: str
    version: str
    snapshot_version: str
    error: str


@dataclass(frozen=True)
class Stale:
    """A request answering a response that was superseded; ignored (its ACK/NACK is about old config)."""

    type_url: str
    nonce: str


Event = Ack | Nack | Stale


class Nonces:
    """Nonces unique within a stream."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> str:
        self._next += 1
        return str(self._next)
