"""A service's ADS (state-of-the-world) subscription to its own resource on the control plane: apply, ACK/NACK.

The protocol follows Envoy's "xDS REST and gRPC protocol"
(https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol, "ACK/NACK and resource type instance
version" and "ACK and NACK semantics"; DiscoveryRequest.version_info / response_nonce / error_detail in
envoy/service/discovery/v3/discovery.proto): the first request carries the node,
the type URL and an empty version and nonce; each response is answered by a request with the response's
nonce, and either the response's version_info (ACK) or the last version successfully applied plus an
error_detail (NACK) — a NACKed version is never applied, the last good config stays. A client that
reconnects sends the version it holds, so the server can tell what it has.
The decision logic (`Subscription`) is sans-IO; `ServiceConfigClient` only moves messages over gRPC.

Several control-plane replicas (`--xds A,B`): the client streams from the first, and when a stream fails or
ends it moves to the next one in the list (round and round, backing off once a whole round failed). It
never applies a version older than the one it runs when that version comes from another replica than the
one it got its version from (a replica that is behind; a single control plane's own rollback is obeyed).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import code_pb2, status_pb2

from outrider.service_resource import ResourceError, unpack_envelope

log = logging.getLogger("outrider.xds_client")

# A control plane that vanishes without closing the connection (host down, network cut) would leave the
# stream open forever: keepalive pings find it. Five minutes is the least gRPC servers accept by default
# (grpc.http2.min_ping_interval_without_data_ms) without answering with GOAWAY "too_many_pings".
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
]

ApplyFn = Callable[[str, Mapping[str, Any]], Awaitable[None]]


class ConfigRejected(Exception):
    """Raised by an apply function to refuse a version: the message becomes the NACK's error_detail."""


def service_node_id(gateway_node_id: str, service: str) -> str:
    """The node id a service claims on the control plane: the gateway's, then the service name."""
    return f"{gateway_node_id}/{service}"


@dataclass(frozen=True)
class Update:
    """A response worth applying: the resource's version and payload."""

    version: str
    payload: Mapping[str, Any]


class Subscription:
    """The client side of one SotW subscription (one type URL), as pure message-in, message-out logic.

    `on_response` says what to do with a response: an Update to apply, or a request to send right away
    (the response is NACKed before any apply, or needs no apply). After an apply, `applied` gives the ACK
    and `refused` the NACK.
    """

    def __init__(self, node: base_pb2.Node, type_url: str) -> None:
        self.node = node
        self.type_url = type_url
        # version_info of the last response ACKed ("" before any): what a NACK and a reconnect send.
        self.acked_version = ""
        # The applied version as the resource names it (the snapshot version); None before the first.
        self.applied_version: str | None = None
        # Digests of the payload live now and of the one being applied: the same payload is ACKed, not re-applied.
        self._applied_digest: bytes | None = None
        self._pending_digest: bytes | None = None
        # The control plane the current stream talks to, and the one the applied version came from.
        self.server = ""
        self._applied_from = ""
        self._pending_from = ""

    def initial_request(self) -> discovery_pb2.DiscoveryRequest:
        """The first request of a stream: node, type, and the version held (empty on the very first)."""
        return discovery_pb2.DiscoveryRequest(node=self.node, type_url=self.type_url,
                                              version_info=self.acked_version)

    def on_response(self, response: discovery_pb2.DiscoveryResponse) -> Update | discovery_pb2.DiscoveryRequest | None:
        """Update to apply, a request to send (NACK, or ACK of what is already applied), or None to ignore."""
        if response.type_url != self.type_url:
            # We subscribe to one type only; an ADS server pushing another is not ours to ACK or NACK.
            log.warning("ignoring a response of an unsubscribed type", extra={"type_url": response.type_url})
            return None
        if len(response.resources) != 1:
            reason = "no resource" if not response.resources else (
                f"{len(response.resources)} resources where exactly one was expected")
            return self.refused(response, reason)
        try:
            decoded = unpack_envelope(self.type_url, response.resources[0])
        except ResourceError as exc:
            return self.refused(response, str(exc))
        older = self._older_from_elsewhere(decoded.version)
        if older is not None:
            return self.refused(response, older)
        digest = hashlib.sha256(decoded.payload_json.encode()).digest()
        if digest == self._applied_digest:
            # Nothing of ours changed (another part of the snapshot did, or a resend after a reconnect):
            # this version is what we already run, so it is ACKed without applying the same config again.
            return self.applied(response, decoded.version)
        self._pending_digest = digest
        self._pending_from = self.server
        return Update(decoded.version, decoded.payload)

    def _older_from_elsewhere(self, version: str) -> str | None:
        """Why a version must not be applied: older than the applied one and from another replica."""
        if self.applied_version is None or self.server == self._applied_from:
            return None
        if not (version.isdigit() and self.applied_version.isdigit()):
            return None
        if int(version) >= int(self.applied_version):
            return None
        return (f"version {version} from {self.server} is older than version {self.applied_version} "
                f"applied from {self._applied_from}; keeping it")

    def applied(self, response: discovery_pb2.DiscoveryResponse, version: str) -> discovery_pb2.DiscoveryRequest:
        """The ACK of a response whose resource is now live."""
        if self._pending_digest is not None:
            self._applied_digest, self._pending_digest = self._pending_digest, None
        self._applied_from = self.server
        self.applied_version = version
        self.acked_version = response.version_info
        return discovery_pb2.DiscoveryRequest(node=self.node, type_url=self.type_url,
                                              version_info=response.version_info,
                                              response_nonce=response.nonce)

    def refused(self, response: discovery_pb2.DiscoveryResponse, reason: str) -> discovery_pb2.DiscoveryRequest:
        """The NACK of a response: the last ACKed version, the response's nonce, and why."""
        self._pending_digest = None
        return discovery_pb2.DiscoveryRequest(
            node=self.node, type_url=self.type_url, version_info=self.acked_version,
            response_nonce=response.nonce,
            error_detail=status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=reason))


class Failover:
    """Which control-plane replica the next stream goes to, and after how long (pure: jitter passed in).

    After every stream the next replica in the list is tried: at once (a short pause against a busy loop)
    while the round still has replicas not tried since the last answer, else after a delay that doubles up
    to max_s, with jitter that spreads the reconnects of many services after a control plane restart. A
    stream that was answered starts the delay over.
    """

    def __init__(self, targets: list[str], initial_s: float, max_s: float) -> None:
        self.targets = targets
        self.initial_s = initial_s
        self.max_s = max_s
        self._index = 0
        self._failed = 0  # streams without an answer since the last answered one
        self._delay = initial_s

    @property
    def current(self) -> str:
        return self.targets[self._index]

    def after_stream(self, answered: bool, jitter: float) -> float:
        """Move to the next replica; seconds to wait before its stream (jitter: a number in [0, 1))."""
        self._failed = 0 if answered else self._failed + 1
        if answered:
            self._delay = self.initial_s
        self._index = (self._index + 1) % len(self.targets)
        if self._failed % len(self.targets) != 0:
            return self.initial_s * jitter
        wait = self._delay * (0.5 + jitter / 2)
        self._delay = min(self._delay * 2, self.max_s)
        return wait


def reason_of(exc: BaseException) -> str:
    """The NACK message for an apply that raised: the message alone for a refusal, else the type too."""
    if isinstance(exc, ConfigRejected):
        return str(exc) or "rejected"
    return f"{type(exc).__name__}: {exc}"


class ServiceConfigClient:
    """Keeps one service subscribed to its resource: applies each new version, ACKs or NACKs it, reconnects."""

    def __init__(
        self,
        target: str | list[str],
        node_id: str,
        node_cluster: str,
        type_url: str,
        apply: ApplyFn,
        *,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 2.0,
        channel_credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        # One address, or several replicas ("a:1,b:2" or a list) tried in order.
        self.targets = [t.strip() for t in target.split(",")] if isinstance(target, str) else list(target)
        if not self.targets or not all(self.targets):
            raise ValueError(f"no control-plane address in {target!r}")
        self.target = self.targets[0]
        self.type_url = type_url
        self._apply = apply
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._credentials = channel_credentials
        # The name to expect in the control plane's certificate (TLS), when it is not the target's host.
        self._options = [*CHANNEL_OPTIONS, *([("grpc.ssl_target_name_override", server_name)] if server_name else [])]
        self._state = Subscription(base_pb2.Node(id=node_id, cluster=node_cluster), type_url)
        self.first_applied = asyncio.Event()
        # True while a stream is open and the server has answered on it.
        self.connected = False

    @property
    def version(self) -> str | None:
        """The last applied version (the resource's snapshot version), None before the first."""
        return self._state.applied_version

    def _channel(self, target: str) -> grpc.aio.Channel:
        if self._credentials is not None:
            return grpc.aio.secure_channel(target, self._credentials, options=self._options)
        return grpc.aio.insecure_channel(target, options=self._options)

    async def run(self) -> None:
        """Subscribe forever; a broken stream is reopened on the next replica (Failover says when). Cancel
        to stop."""
        failover = Failover(self.targets, self._backoff_initial_s, self._backoff_max_s)
        channels = {target: self._channel(target) for target in dict.fromkeys(self.targets)}
        try:
            while True:
                self.target = self._state.server = failover.current
                answered = False
                try:
                    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channels[self.target])
                    answered = await self._stream(stub)
                    log.warning("control plane closed the stream", extra={"target": self.target})
                except grpc.aio.AioRpcError as exc:
                    log.warning("control plane stream failed", extra={
                        "target": self.target, "code": exc.code().name, "details": exc.details()})
                except Exception:  # never let one odd stream end the subscription: log it and reconnect
                    log.exception("control plane stream broke", extra={"target": self.target})
                finally:
                    self.connected = False
                await asyncio.sleep(failover.after_stream(answered, random.random()))  # noqa: S311 (jitter)
        finally:
            for channel in channels.values():
                await channel.close()

    async def _stream(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> bool:
        """One ADS stream until the server ends it; True if the server answered at least once."""
        call = stub.StreamAggregatedResources()
        answered = False
        try:
            await call.write(self._state.initial_request())
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return answered
                answered = self.connected = True
                request = await self._handle(response)
                if request is not None:
                    await call.write(request)
        finally:
            call.cancel()

    async def _handle(self, response: discovery_pb2.DiscoveryResponse) -> discovery_pb2.DiscoveryRequest | None:
        # Decoding a version (JSON of a 10,000-route gateway: MBs) happens beside the event loop, which keeps
        # serving the service's calls meanwhile; only this stream's task waits for it.
        step = await asyncio.to_thread(self._state.on_response, response)
        if not isinstance(step, Update):
            if step is not None and step.HasField("error_detail"):
                log.error("config version refused", extra={
                    "version": response.version_info, "reason": step.error_detail.message})
            return step
        try:
            await self._apply(step.version, step.payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure to apply is a NACK; the last good config stays live
            reason = reason_of(exc)
            log.error("config version refused; the last good one stays", extra={
                "version": step.version, "kept": self.version, "reason": reason},
                exc_info=not isinstance(exc, ConfigRejected))
            return self._state.refused(response, reason)
        request = self._state.applied(response, step.version)
        self.first_applied.set()
        log.info("config version applied", extra={"version": step.version})
        return request
