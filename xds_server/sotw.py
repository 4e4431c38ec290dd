"""State-of-the-world ADS stream: requests and snapshots in, responses and ACK/NACK events out (sans I/O).

Rules (envoy api docs, "xDS REST and gRPC protocol"):
- a request whose nonce is not the last one sent for its type is stale and ignored;
- a request with error_detail NACKs the version it answers: recorded, never resent as is (the node keeps
  its last ACKed config); a request without it ACKs;
- a type is pushed only when what the node would receive (names and resource versions) differs from what it
  was last sent, so unchanged resources are not resent and a NACKed version is not sent again in a loop;
- responses for one snapshot go out clusters → endpoints → listeners → routes, and endpoints follow
  every cluster push (an updated EDS cluster warms until it receives its endpoints again).
"""

from __future__ import annotations

from dataclasses import dataclass

from xds_server.protocol import Ack, Event, Nack, Nonces, SotwRequest, SotwResponse, Stale
from xds_server.snapshot import CLUSTER, ENDPOINT, Resource, Snapshot


@dataclass
class _TypeState:
    names: frozenset[str] = frozenset()
    wildcard: bool = True
    nonce: str | None = None
    sent_version: str = ""
    sent_snapshot: str = ""
    sent: tuple[tuple[str, str], ...] | None = None
    acked_version: str | None = None


class SotwStream:
    def __init__(self) -> None:
        self._types: dict[str, _TypeState] = {}
        self._nonces = Nonces()

    def on_request(
        self, request: SotwRequest, snapshot: Snapshot | None
    ) -> tuple[list[SotwResponse], list[Event]]:
        state = self._types.get(request.type_url)
        if state is None:
            state = self._types[request.type_url] = _TypeState()
        elif request.nonce and request.nonce != state.nonce:
            return [], [Stale(request.type_url, request.nonce)]
        events: list[Event] = []
        if request.nonce:
            if request.error is not None:
                events.append(
                    Nack(
                        request.type_url,
                        request.nonce,
                        state.sent_version,
                        state.sent_snapshot,
                        request.error,
                    )
                )
            else:
                state.acked_version = request.version_info
                events.append(Ack(request.type_url, request.nonce, request.version_info, state.sent_snapshot))
        else:
            # A new subscription (or Envoy reconnecting): always answer, Envoy ignores an identical config.
            state.sent = None
        state.names = frozenset(request.names)
        # Empty names means "everything" for every type (Envoy only does it for clusters and listeners).
        state.wildcard = not request.names or "*" in request.names
        if snapshot is None:
            return [], events
        responses = []
        response = self._respond(request.type_url, state, snapshot)
        if response is not None:
            responses.append(response)
            if request.type_url == CLUSTER:
                responses.extend(self._endpoints_after_clusters(snapshot))
        return responses, events

    def on_snapshot(self, snapshot: Snapshot) -> list[SotwResponse]:
        out: list[SotwResponse] = []
        for type_url in snapshot.types:
            state = self._types.get(type_url)
            if state is not None and not (type_url == ENDPOINT and any(r.type_url == ENDPOINT for r in out)):
                response = self._respond(type_url, state, snapshot)
                if response is not None:
                    out.append(response)
                    if type_url == CLUSTER:
                        out.extend(self._endpoints_after_clusters(snapshot))
        return out

    def _endpoints_after_clusters(self, snapshot: Snapshot) -> list[SotwResponse]:
        # An updated EDS cluster warms until it gets endpoints again: resend them even when unchanged.
        state = self._types.get(ENDPOINT)
        if state is None or state.nonce is None:
            return []
        state.sent = None
        response = self._respond(ENDPOINT, state, snapshot)
        return [response] if response is not None else []

    def _respond(self, type_url: str, state: _TypeState, snapshot: Snapshot) -> SotwResponse | None:
        available = snapshot.get(type_url)
        chosen: list[Resource]
        if state.wildcard:
            chosen = list(available.values())
        else:
            chosen = [available[n] for n in sorted(state.names) if n in available]
        content = tuple((r.name, r.version) for r in chosen)
        if content == state.sent:
            return None
        state.sent = content
        state.nonce = self._nonces()
        state.sent_version = snapshot.type_version(type_url)
        state.sent_snapshot = snapshot.version
        return SotwResponse(type_url, state.sent_version, state.nonce, tuple(chosen), snapshot.version)

    def acked_versions(self) -> dict[str, str | None]:
        return {t: s.acked_version for t, s in self._types.items()}
