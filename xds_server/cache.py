"""Snapshot cache: the current snapshot per node key, the streams of each key, and ACK tracking of pushes.

Separate from the gRPC streams (go-control-plane's SnapshotCache): a stream registers here, feeds its
requests in and gets its responses through a send callback; a push resolves once every stream of the key
has ACKed (or one has NACKed) what the new snapshot made it send.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xds_server.callbacks import Callbacks
from xds_server.delta import DeltaStream
from xds_server.protocol import (
    Ack,
    DeltaRequest,
    DeltaResponse,
    Event,
    Nack,
    Node,
    SotwRequest,
    SotwResponse,
    Stale,
)
from xds_server.snapshot import Snapshot, rank, short
from xds_server.sotw import SotwStream

Response = SotwResponse | DeltaResponse


class InconsistentSnapshot(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(eq=False)
class Stream:
    """One connected ADS stream (one Envoy's connection)."""

    id: int
    node: Node
    key: str
    delta: bool
    send: Callable[[Response], None]
    machine: SotwStream | DeltaStream


@dataclass(frozen=True)
class NackReport:
    node: str
    type_url: str
    version: str
    error: str


@dataclass
class Push:
    """What one snapshot made the streams send, until each of them ACKs or NACKs it."""

    version: str
    waiting: set[tuple[int, str]] = field(default_factory=set)
    acked_by: set[str] = field(default_factory=set)
    nacks: list[NackReport] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def settle(self) -> None:
        if not self.waiting or self.nacks:
            self.done.set()

    async def wait(self, timeout_s: float) -> bool:
        """True when every stream answered (ACK or NACK) in time."""
        try:
            await asyncio.wait_for(self.done.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


@dataclass
class NodeStatus:
    key: str
    protocol: str
    streams: int = 0
    acked: dict[str, str] = field(default_factory=dict)
    last_nack: dict[str, Any] | None = None
    last_seen: float = 0.0


class SnapshotCache:
    def __init__(self, node_key: Callable[[Node], str], callbacks: Callbacks | None = None) -> None:
        self._node_key = node_key
        self._callbacks = callbacks or Callbacks()
        self._snapshots: dict[str, Snapshot] = {}
        self._streams: dict[str, set[Stream]] = {}
        self._pushes: dict[str, Push] = {}
        self._ids = itertools.count(1)
        self.nodes: dict[str, NodeStatus] = {}

    # --- snapshots --------------------------------------------------------------------------------

    def snapshot(self, key: str) -> Snapshot | None:
        return self._snapshots.get(key)

    def set_snapshot(self, key: str, snapshot: Snapshot) -> Push:
        """Check, store and push a snapshot to every stream of the key; raises InconsistentSnapshot."""
        problems = snapshot.inconsistencies()
        if problems:
            raise InconsistentSnapshot(problems)
        self._snapshots[key] = snapshot
        push = Push(snapshot.version)
        self._pushes[key] = push
        for stream in list(self._streams.get(key, ())):
            responses: list[Response] = list(stream.machine.on_snapshot(snapshot))
            self._send(stream, responses)
        push.settle()
        return push

    # --- streams ----------------------------------------------------------------------------------

    def open_stream(self, node: Node, delta: bool, send: Callable[[Response], None]) -> Stream:
        key = self._node_key(node)
        machine: SotwStream | DeltaStream = DeltaStream() if delta else SotwStream()
        stream = Stream(next(self._ids), node, key, delta, send, machine)
        self._streams.setdefault(key, set()).add(stream)
        status = self.nodes.get(node.id)
        if status is None:
            status = self.nodes[node.id] = NodeStatus(key, "delta" if delta else "sotw")
        status.streams += 1
        status.protocol = "delta" if delta else "sotw"
        status.last_seen = time.time()
        self._callbacks.stream_opened(stream.id, node, delta, key in self._snapshots)
        return stream

    def close_stream(self, stream: Stream) -> None:
        self._streams.get(stream.key, set()).discard(stream)
        status = self.nodes.get(stream.node.id)
        if status is not None:
            status.streams -= 1
        push = self._pushes.get(stream.key)
        if push is not None:
            # A stream that went away answers nothing; it gets the current snapshot when it reconnects.
            push.waiting = {w for w in push.waiting if w[0] != stream.id}
            push.settle()
        self._callbacks.stream_closed(stream.id, stream.node)

    def on_request(self, stream: Stream, request: SotwRequest | DeltaRequest) -> None:
        snapshot = self._snapshots.get(stream.key)
        responses: list[Response]
        if isinstance(request, DeltaRequest):
            assert isinstance(stream.machine, DeltaStream)
            d_responses, events = stream.machine.on_request(request, snapshot)
            responses = list(d_responses)
        else:
            assert isinstance(stream.machine, SotwStream)
            s_responses, events = stream.machine.on_request(request, snapshot)
            responses = list(s_responses)
        self._callbacks.request(stream.id, stream.node, request.type_url)
        for event in events:
            self._on_event(stream, event)
        self._send(stream, responses)
        push = self._pushes.get(stream.key)
        if push is not None:
            push.settle()

    def _send(self, stream: Stream, responses: list[Response]) -> None:
        push = self._pushes.get(stream.key)
        for response in sorted(responses, key=lambda r: rank(r.type_url)):
            if push is not None and response.snapshot_version == push.version:
                push.waiting.add((stream.id, response.nonce))
            stream.send(response)
            self._callbacks.response(stream.id, stream.node, response)

    def _on_event(self, stream: Stream, event: Event) -> None:
        status = self.nodes[stream.node.id]
        status.last_seen = time.time()
        if isinstance(event, Stale):
            self._callbacks.stale(stream.id, stream.node, event.type_url)
            return
        push = self._pushes.get(stream.key)
        if push is not None and event.snapshot_version == push.version:
            push.waiting.discard((stream.id, event.nonce))
        if isinstance(event, Ack):
            status.acked[short(event.type_url)] = event.version
            if push is not None and event.snapshot_version == push.version:
                push.acked_by.add(stream.node.id)
            self._callbacks.ack(stream.id, stream.node, event.type_url, event.version)
        elif isinstance(event, Nack):
            status.last_nack = {
                "type": short(event.type_url),
                "version": event.version,
                "snapshot_version": event.snapshot_version,
                "error": event.error,
                "at": round(time.time(), 3),
            }
            if push is not None and event.snapshot_version == push.version:
                push.nacks.append(NackReport(stream.node.id, event.type_url, event.version, event.error))
            self._callbacks.nack(stream.id, stream.node, event.type_url, event.version, event.error)

    def stream_count(self, key: str | None = None) -> int:
        if key is not None:
            return len(self._streams.get(key, ()))
        return sum(len(s) for s in self._streams.values())

    def status(self) -> dict[str, Any]:
        return {
            node_id: {
                "key": s.key,
                "protocol": s.protocol,
                "connected_streams": s.streams,
                "acked": dict(s.acked),
                "last_nack": s.last_nack,
                "has_snapshot": s.key in self._snapshots,
            }
            for node_id, s in sorted(self.nodes.items())
        }
