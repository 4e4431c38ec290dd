"""The envelope of a service's xDS resource: schema, snapshot version and canonical-JSON payload, both ways."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from outrider.protos.outrider.config.v1.service_config_pb2 import (
    ExtAuthzConfig,
    ExtProcConfig,
    RateLimitServiceConfig,
)

T = TypeVar("T")

# The shape of payload_json this code writes and reads; a service refuses any other (NACK), so a
# control plane newer than its services fails loudly instead of being half understood.
# 2: ext_authz's rules carry direct-response routes, header conditions and allow_path_parameters (mesh fallback).
SCHEMA = 2

_PREFIX = "type.googleapis.com/"
EXT_AUTHZ_TYPE_URL = _PREFIX + ExtAuthzConfig.DESCRIPTOR.full_name
RATELIMIT_TYPE_URL = _PREFIX + RateLimitServiceConfig.DESCRIPTOR.full_name
EXT_PROC_TYPE_URL = _PREFIX + ExtProcConfig.DESCRIPTOR.full_name

Envelope = ExtAuthzConfig | RateLimitServiceConfig | ExtProcConfig
EnvelopeClass = type[ExtAuthzConfig] | type[RateLimitServiceConfig] | type[ExtProcConfig]

MESSAGES: dict[str, EnvelopeClass] = {
    EXT_AUTHZ_TYPE_URL: ExtAuthzConfig,
    RATELIMIT_TYPE_URL: RateLimitServiceConfig,
    EXT_PROC_TYPE_URL: ExtProcConfig,
}


class ResourceError(ValueError):
    """A service resource this code cannot read (wrong type, schema, or payload)."""


def type_url_of(kind: str | EnvelopeClass) -> str:
    return kind if isinstance(kind, str) else _PREFIX + kind.DESCRIPTOR.full_name


def _message_class(kind: str | EnvelopeClass) -> EnvelopeClass:
    if not isinstance(kind, str):
        return kind
    try:
        return MESSAGES[kind]
    except KeyError:
        raise ResourceError(f"unknown outrider service resource type {kind!r}") from None


def canonical_json(payload: Mapping[str, Any]) -> str:
    """One text per payload value: the control plane and the services compare versions by these bytes."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(kind: str | EnvelopeClass, version: str, payload: Mapping[str, Any]) -> bytes:
    """The serialized envelope (Any.value) of one service's payload for one snapshot version."""
    return encode_json(kind, version, canonical_json(payload))


def encode_json(kind: str | EnvelopeClass, version: str, payload_json: str) -> bytes:
    """encode() for a payload already in canonical JSON (see PerItemJson)."""
    message = _message_class(kind)(schema=SCHEMA, version=version, payload_json=payload_json)
    data: bytes = message.SerializeToString(deterministic=True)
    return data


_ITEMS = "\0outrider-items\0"  # a string no config holds: where the pre-encoded items go


def canonical_json_with_items(head: Mapping[str, Any], key: str, items_json: Sequence[str]) -> str:
    """canonical_json({**head, key: [items]}) given each item's canonical JSON text.

    The items are not encoded again: with 10,000 routes, encoding the whole payload per version cost more
    than building Envoy's resources. The result equals canonical_json() byte for byte (tested).
    """
    text = canonical_json({**head, key: _ITEMS})
    marker = json.dumps(_ITEMS)
    if text.count(marker) != 1:  # the head itself holds the marker: take the slow path, never a wrong text
        return canonical_json({**head, key: [json.loads(item) for item in items_json]})
    return text.replace(marker, "[" + ",".join(items_json) + "]", 1)


class PerItemJson(Generic[T]):
    """Each item's canonical JSON, kept per source object (a route) and reused while the object is unchanged.

    Config objects are frozen and a change replaces only what changed, so between two versions almost every
    route is the same object. Only the items of the latest call are kept (memory follows the config).
    """

    def __init__(self, item: Callable[[T], Mapping[str, Any] | None]) -> None:
        self._item = item
        self._texts: dict[int, tuple[T, str | None]] = {}

    def __call__(self, sources: Sequence[T]) -> list[str]:
        texts: dict[int, tuple[T, str | None]] = {}
        out = []
        for source in sources:
            kept = self._texts.get(id(source))
            if kept is None or kept[0] is not source:
                value = self._item(source)
                kept = (source, None if value is None else canonical_json(value))
            texts[id(source)] = kept
            if kept[1] is not None:
                out.append(kept[1])
        self._texts = texts
        return out


def pack(kind: str | EnvelopeClass, version: str, payload: Mapping[str, Any]) -> any_pb2.Any:
    """The same, as the google.protobuf.Any a DiscoveryResponse carries."""
    return any_pb2.Any(type_url=type_url_of(kind), value=encode(kind, version, payload))


@dataclass(frozen=True)
class Decoded:
    """A read envelope: its snapshot version, its payload, and the payload's canonical text as sent."""

    version: str
    payload: dict[str, Any]
    payload_json: str


def decode_envelope(kind: str | EnvelopeClass, data: bytes) -> Decoded:
    """The whole of a serialized envelope; raises ResourceError saying what is wrong."""
    cls = _message_class(kind)
    try:
        message = cls.FromString(data)
    except DecodeError as exc:
        raise ResourceError(f"{cls.DESCRIPTOR.full_name}: not a valid protobuf message ({exc})") from None
    if message.schema != SCHEMA:
        raise ResourceError(f"{cls.DESCRIPTOR.full_name}: schema {message.schema} is not supported "
                            f"(this service reads schema {SCHEMA})")
    try:
        payload = json.loads(message.payload_json)
    except ValueError as exc:
        raise ResourceError(f"{cls.DESCRIPTOR.full_name}: payload_json is not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise ResourceError(f"{cls.DESCRIPTOR.full_name}: payload_json must hold a JSON object, "
                            f"not {type(payload).__name__}")
    return Decoded(message.version, payload, message.payload_json)


def decode(kind: str | EnvelopeClass, data: bytes) -> tuple[str, dict[str, Any]]:
    """(version, payload) of a serialized envelope; raises ResourceError saying what is wrong."""
    decoded = decode_envelope(kind, data)
    return decoded.version, decoded.payload


def unpack_envelope(kind: str | EnvelopeClass, resource: any_pb2.Any) -> Decoded:
    """decode_envelope() of an Any, checking it holds the expected type first."""
    expected = type_url_of(kind)
    if resource.type_url != expected:
        raise ResourceError(f"resource of type {resource.type_url!r} where {expected!r} was expected")
    return decode_envelope(kind, resource.value)


def unpack(kind: str | EnvelopeClass, resource: any_pb2.Any) -> tuple[str, dict[str, Any]]:
    """(version, payload) of an Any, checking it holds the expected type first."""
    decoded = unpack_envelope(kind, resource)
    return decoded.version, decoded.payload
