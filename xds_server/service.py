"""gRPC adapter of ADS: protobuf ↔ the plain stream values, responses pre-encoded once for every stream.

Registered as a generic handler whose response serializer is the identity, so one encoding of a
response body is shared by every stream that receives it (only the nonce differs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from xds_server import wire
from xds_server.cache import Response, SnapshotCache
from xds_server.protocol import DeltaRequest, DeltaResponse, Node, SotwRequest, SotwResponse
from xds_server.tls import peer_identities

log = logging.getLogger("xds_server.grpc")
SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_RES = discovery_pb2.DiscoveryResponse.DESCRIPTOR.fields_by_name
_DRES = discovery_pb2.DeltaDiscoveryResponse.DESCRIPTOR.fields_by_name
_RESOURCE = discovery_pb2.Resource.DESCRIPTOR.fields_by_name


class ResponseEncoder:
    """Encodes responses; the nonce-free part is cached per content (100 Envoys share one encoding)."""

    def __init__(self, size: int = 64) -> None:
        self._cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._size = size

    def _cached(self, key: tuple[Any, ...], make: Any) -> bytes:
        body = self._cache.get(key)
        if body is None:
            body = self._cache[key] = make()
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return body

    def encode(self, response: Response) -> bytes:
        if isinstance(response, SotwResponse):
            return self._sotw(response)
        return self._delta(response)

    def _sotw(self, r: SotwResponse) -> bytes:
        key = ("sotw", r.type_url, r.version, tuple((x.name, x.version) for x in r.resources))

        def make() -> bytes:
            return (
                wire.text(_RES["version_info"].number, r.version)
                + wire.text(_RES["type_url"].number, r.type_url)
                + b"".join(
                    wire.field(_RES["resources"].number, wire.any_message(r.type_url, x.body))
                    for x in r.resources
                )
            )

        return self._cached(key, make) + wire.text(_RES["nonce"].number, r.nonce)

    def _delta(self, r: DeltaResponse) -> bytes:
        key = (
            "delta",
            r.type_url,
            r.system_version,
            tuple((x.name, x.version) for x in r.resources),
            r.removed,
        )

        def make() -> bytes:
            parts = [
                wire.text(_DRES["system_version_info"].number, r.system_version),
                wire.text(_DRES["type_url"].number, r.type_url),
            ]
            for x in r.resources:
                resource = (
                    wire.text(_RESOURCE["name"].number, x.name)
                    + wire.text(_RESOURCE["version"].number, x.version)
                    + wire.field(_RESOURCE["resource"].number, wire.any_message(r.type_url, x.body))
                )
                parts.append(wire.field(_DRES["resources"].number, resource))
            parts.extend(wire.text(_DRES["removed_resources"].number, name) for name in r.removed)
            return b"".join(parts)

        return self._cached(key, make) + wire.text(_DRES["nonce"].number, r.nonce)


def sotw_request(message: discovery_pb2.DiscoveryRequest) -> SotwRequest:
    error = (message.error_detail.message or "rejected") if message.HasField("error_detail") else None
    return SotwRequest(
        message.type_url, message.version_info, message.response_nonce, tuple(message.resource_names), error
    )


def delta_request(message: discovery_pb2.DeltaDiscoveryRequest) -> DeltaRequest:
    error = (message.error_detail.message or "rejected") if message.HasField("error_detail") else None
    return DeltaRequest(
        message.type_url,
        tuple(message.resource_names_subscribe),
        tuple(message.resource_names_unsubscribe),
        dict(message.initial_resource_versions),
        message.response_nonce,
        error,
    )


class AdsService:
    def __init__(self, cache: SnapshotCache, encoder: ResponseEncoder | None = None,
                 admits: Callable[[Node, frozenset[str]], bool] | None = None,
                 before_stream: Callable[[Node, str], Awaitable[None]] | None = None) -> None:
        self._cache = cache
        self._encoder = encoder or ResponseEncoder()
        self._admits = admits or (lambda node, peer: True)
        # Awaited before a new stream is answered, with the version the client says it holds (SotW's
        # version_info; "" for delta): replicas catch up with their shared store there.
        self._before_stream = before_stream

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.stream_sotw,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=bytes,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.stream_delta,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=bytes,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    async def stream_sotw(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for item in self._serve(requests, context, delta=False):
            yield item

    async def stream_delta(
        self, requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for item in self._serve(requests, context, delta=True):
            yield item

    async def _serve(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, delta: bool
    ) -> AsyncIterator[bytes]:
        out: asyncio.Queue[bytes | None] = asyncio.Queue()
        messages = aiter(requests)
        try:
            first = await anext(messages)
        except (StopAsyncIteration, Exception):  # closed before saying who it is
            return
        node = Node(first.node.id, first.node.cluster)
        peer = peer_identities(context.auth_context() or {})
        if not self._admits(node, peer):
            log.warning("ADS stream refused: node not expected (or not granted to its certificate)",
                        extra={"node": node.id, "cluster": node.cluster, "peer": sorted(peer)})
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"node {node.id!r} (cluster {node.cluster!r}) is not expected by this control plane")

        if self._before_stream is not None:
            await self._before_stream(node, "" if delta else first.version_info)

        def send(response: Response) -> None:
            out.put_nowait(self._encoder.encode(response))

        stream = self._cache.open_stream(node, delta, send)

        async def read() -> None:
            try:
                self._cache.on_request(stream, delta_request(first) if delta else sotw_request(first))
                async for message in messages:
                    self._cache.on_request(stream, delta_request(message) if delta else sotw_request(message))
            except Exception as exc:  # the peer went away mid-read; the stream ends either way
                log.debug("stream read ended", extra={"error": repr(exc)})
            finally:
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await out.get()) is not None:
                yield item
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._cache.close_stream(stream)
