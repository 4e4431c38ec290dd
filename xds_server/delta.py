"""Incremental (delta) ADS stream: per-resource versions, subscribe/unsubscribe, removals (sans I/O).

The stream remembers which version of each resource the node has (from initial_resource_versions and
from what it was sent) and sends only resources whose version differs, plus removed_resources for
names it has that are gone. Subscription changes are applied even when the request's nonce is stale;
only its ACK/NACK part is about old config and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xds_server.protocol import Ack, DeltaRequest, DeltaResponse, Event, Nack, Nonces, Stale
from xds_server.snapshot import CLUSTER, ENDPOINT, Resource, Snapshot

# What the node was told about a subscribed name that does not exist.
_ABSENT = ""


@dataclass
class _TypeState:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)
    pending: dict[str, tuple[str, str]] = field(default_factory=dict)  # nonce → (type version, snapshot)
    acked_version: str | None = None


class DeltaStream:
    def __init__(self) -> None:
        self._types: dict[str, _TypeState] = {}
        self._nonces = Nonces()

    def on_request(
        self, request: DeltaRequest, snapshot: Snapshot | None
    ) -> tuple[list[DeltaResponse], list[Event]]:
        events: list[Event] = []
        state = self._types.get(request.type_url)
        if state is None:
            state = self._types[request.type_url] = _TypeState()
            # The first request without names subscribes to everything (legacy wildcard).
            state.wildcard = not request.subscribe
            state.known.update(request.initial_versions)
        if request.nonce:
            sent = state.pending.pop(request.nonce, None)
            if sent is None:
                events.append(Stale(request.type_url, request.nonce))
            elif request.error is not None:
                events.append(Nack(request.type_url, request.nonce, sent[0], sent[1], request.error))
            else:
                state.acked_version = sent[0]
                events.append(Ack(request.type_url, request.nonce, sent[0], sent[1]))
        for name in request.subscribe:
            if name == "*":
                state.wildcard = True
            else:
                state.names.add(name)
        for name in request.unsubscribe:
            if name == "*":
                state.wildcard = False
            else:
                state.names.discard(name)
                state.known.pop(name, None)
        if snapshot is None:
            return [], events
        responses = []
        response = self._respond(request.type_url, state, snapshot)
        if response is not None:
            responses.append(response)
            if request.type_url == CLUSTER:
                responses.extend(self._endpoints_after_clusters(response, snapshot))
        return responses, events

    def on_snapshot(self, snapshot: Snapshot) -> list[DeltaResponse]:
        out: list[DeltaResponse] = []
        for type_url in snapshot.types:
            state = self._types.get(type_url)
            if state is not None and not (type_url == ENDPOINT and any(r.type_url == ENDPOINT for r in out)):
                response = self._respond(type_url, state, snapshot)
                if response is not None:
                    out.append(response)
                    if type_url == CLUSTER:
                        out.extend(self._endpoints_after_clusters(response, snapshot))
        return out

    def _endpoints_after_clusters(self, clusters: DeltaResponse, snapshot: Snapshot) -> list[DeltaResponse]:
        # An updated EDS cluster warms until it gets its endpoints again: resend them even when unchanged.
        state = self._types.get(ENDPOINT)
        if state is None:
            return []
        for cluster in clusters.resources:
            for ref_type, name in cluster.refs:
                if ref_type == ENDPOINT:
                    state.known.pop(name, None)
        response = self._respond(ENDPOINT, state, snapshot)
        return [response] if response is not None else []

    def _respond(self, type_url: str, state: _TypeState, snapshot: Snapshot) -> DeltaResponse | None:
        available = snapshot.get(type_url)
        wanted = set(available) if state.wildcard else set()
        wanted |= state.names
        changed: list[Resource] = []
        removed: list[str] = []
        for name in sorted(wanted):
            resource = available.get(name)
            if resource is None:
                if state.known.get(name) != _ABSENT:
                    removed.append(name)
                    state.known[name] = _ABSENT
            elif state.known.get(name) != resource.version:
                changed.append(resource)
                state.known[name] = resource.version
        for name in sorted(set(state.known) - wanted):
            # Gone from a wildcard subscription: tell the node, then forget it.
            if state.known.pop(name) != _ABSENT:
                removed.append(name)
        if not changed and not removed:
            return None
        nonce = self._nonces()
        version = snapshot.type_version(type_url)
        state.pending[nonce] = (version, snapshot.version)
        return DeltaResponse(type_url, version, nonce, tuple(changed), tuple(removed), snapshot.version)

    def acked_versions(self) -> dict[str, str | None]:
        return {t: s.acked_version for t, s in self._types.items()}
