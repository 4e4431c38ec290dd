"""Envoy JSON-form dicts → deterministic protobuf wire bytes without json_format (the cold-build hot path).

`json_format.ParseDict` costs ~90 µs a route; this encoder walks the same dict against the message
descriptors and writes the wire format directly. It covers the shapes the compiler emits (scalars,
enums by name, nested and repeated messages, string-keyed maps, Any by `@type`, Duration, wrapper and
Struct well-known types) and raises `Unsupported` for anything else, so `serialize` falls back to
`to_proto(...).SerializeToString(deterministic=True)`, which also reports invalid input. Output equals
that fallback byte for byte (map entries sorted, fields in number order), except that maps inside an
Any are sorted here too (ParseDict packs an Any non-deterministically); tests/xds/test_fast_encode.py
checks both.
"""

from __future__ import annotations

import marshal
import struct
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format, message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from outrider.envoy_protos import known_type, to_proto
from xds_server.wire import SMALL, varint

Encode = Callable[[Any], bytes]
_F = FieldDescriptor
# Well-known types whose JSON form is a scalar: converted once per distinct value by protobuf itself.
_SCALAR_WKT = frozenset({
    "google.protobuf.Duration",
    "google.protobuf.Timestamp",
    "google.protobuf.FieldMask",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
})
# JSON forms this encoder leaves to ParseDict.
_UNSUPPORTED_WKT = frozenset({
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.BytesValue",
})


class Unsupported(Exception):
    """The dict has a shape (or an invalid value) this encoder leaves to json_format."""


_SMALL = SMALL
_varint = varint


def _len(n: int) -> bytes:
    return _SMALL[n] if n < 16384 else _varint(n)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


# --- scalar encoders: value → payload bytes (no tag); raise Unsupported on a value ParseDict would judge --


def _int_range(lo: int, hi: int) -> Callable[[Any], bytes]:
    def enc(v: Any) -> bytes:
        if type(v) is not int or not lo <= v < hi:
            raise Unsupported
        return _SMALL[v] if 0 <= v < 16384 else _varint(v if v >= 0 else v + (1 << 64))

    return enc


def _zigzag(bits: int) -> Callable[[Any], bytes]:
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)

    def enc(v: Any) -> bytes:
        if type(v) is not int or not lo <= v < hi:
            raise Unsupported
        return _varint((v << 1) ^ (v >> (bits - 1)))

    return enc


def _packer(fmt: str, is_float: bool, lo: int = 0, hi: int = 0) -> Callable[[Any], bytes]:
    pack = struct.Struct(fmt).pack

    def enc(v: Any) -> bytes:
        if is_float:
            # Zero (presence rules, -0.0), NaN and infinities are json_format's business.
            if type(v) not in (int, float) or not v or v != v or v in (float("inf"), float("-inf")):
                raise Unsupported
            if fmt == "<f" and abs(v) > 3.4028234663852886e38:
                raise Unsupported
            return pack(v)
        if type(v) is not int or not lo <= v < hi:
            raise Unsupported
        return pack(v)

    return enc


def _bool(v: Any) -> bytes:
    if type(v) is not bool:
        raise Unsupported
    return b"\x01" if v else b"\x00"


_VARINT_KINDS: dict[int, Callable[[Any], bytes]] = {
    _F.TYPE_INT32: _int_range(-(1 << 31), 1 << 31),  # negative: ten bytes, as two's complement in 64 bits
    _F.TYPE_INT64: _int_range(-(1 << 63), 1 << 63),
    _F.TYPE_UINT32: _int_range(0, 1 << 32),
    _F.TYPE_UINT64: _int_range(0, 1 << 64),
    _F.TYPE_SINT32: _zigzag(32),
    _F.TYPE_SINT64: _zigzag(64),
    _F.TYPE_BOOL: _bool,
}
_FIXED_KINDS: dict[int, tuple[int, Callable[[Any], bytes]]] = {
    _F.TYPE_DOUBLE: (1, _packer("<d", True)),
    _F.TYPE_FLOAT: (5, _packer("<f", True)),
    _F.TYPE_FIXED32: (5, _packer("<I", False, 0, 1 << 32)),
    _F.TYPE_SFIXED32: (5, _packer("<i", False, -(1 << 31), 1 << 31)),
    _F.TYPE_FIXED64: (1, _packer("<Q", False, 0, 1 << 64)),
    _F.TYPE_SFIXED64: (1, _packer("<q", False, -(1 << 63), 1 << 63)),
}


def _enum(field: FieldDescriptor) -> Callable[[Any], bytes]:
    enum = field.enum_type
    by_name = {name: _varint(value.number if value.number >= 0 else value.number + (1 << 64))
               for name, value in enum.values_by_name.items()}
    by_number = {number: by_name[value.name] for number, value in enum.values_by_number.items()}

    def enc(v: Any) -> bytes:
        found = by_name.get(v) if type(v) is str else by_number.get(v) if type(v) is int else None
        if found is None:
            raise Unsupported
        return found

    return enc


class _Message:
    """Field table of one message type, and per order of dict keys a plan: the encoders in field order.

    Each field has a bit (the members of a oneof share one), so a field given twice (by its proto and
    its JSON name) or two members of one oneof are refused as ParseDict refuses them.
    """

    def __init__(self, descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        self.fields: dict[str, tuple[int, int, Encode]] = {}
        self.plans: dict[tuple[str, ...], Encode] = {}

    def build(self) -> None:
        groups = len(self.descriptor.oneofs)
        for field in self.descriptor.fields:
            oneof = field.containing_oneof
            bit = 1 << (oneof.index if oneof is not None else groups + field.index)
            entry = (field.number, bit, _field_encoder(field))
            self.fields[field.name] = entry
            self.fields.setdefault(field.json_name, entry)

    def plan(self, keys: tuple[str, ...]) -> Encode:
        """The encoder of dicts with these keys in this order: one generated function calling the field
        encoders in field-number order (a third of the cost of looping over a list of them)."""
        if not self.fields:
            self.build()  # on first use: a Cluster reaches hundreds of message types, few of them used
        seen = 0
        found = []
        for key in keys:
            entry = self.fields.get(key)
            if entry is None or seen & entry[1]:
                raise Unsupported
            seen |= entry[1]
            found.append((entry[0], key, entry[2]))
        found.sort()
        namespace: dict[str, Any] = {f"e{i}": enc for i, (_, _, enc) in enumerate(found)}
        calls = [f"e{i}(v[{key!r}])" for i, (_, key, _) in enumerate(found)]
        if not calls:
            body = "b''"
        elif len(calls) <= 4:
            body = " + ".join(calls)
        else:
            body = "b''.join((" + ", ".join(calls) + "))"
        exec(f"def plan(v):\n    return {body}\n", namespace)  # noqa: S102 - keys are the descriptor's field names
        plan: Encode = namespace["plan"]
        if len(self.plans) >= 1024:
            self.plans.clear()
        self.plans[keys] = plan
        return plan

    def encode(self, value: Any) -> bytes:
        if type(value) is not dict:
            raise Unsupported
        keys = tuple(value)
        plan = self.plans.get(keys)
        if plan is None:
            plan = self.plan(keys)
        return plan(value)


_MESSAGES: dict[str, _Message] = {}


def _message(descriptor: Descriptor) -> _Message:
    found = _MESSAGES.get(descriptor.full_name)
    if found is None:
        found = _MESSAGES[descriptor.full_name] = _Message(descriptor)
    return found


def _memo(encode: Encode, limit: int = 8192) -> Encode:
    """Encodings by marshal of the JSON value: per-filter configs and the like repeat across thousands of
    routes. marshal takes only exact builtin types and round-trips, so equal keys mean equal values (it
    is twice as fast as repr); the cache is bounded."""
    cache: dict[bytes, bytes] = {}

    def enc(value: Any) -> bytes:
        try:
            key = marshal.dumps(value)
        except ValueError:  # not plain JSON data (a str subclass, ...): encode without caching
            return encode(value)
        found = cache.get(key)
        if found is None:
            found = encode(value)
            if len(cache) >= limit:
                cache.clear()
            cache[key] = found
        return found

    return enc


def _scalar_wkt(descriptor: Descriptor) -> Callable[[Any], bytes]:
    """Duration "1.5s", wrappers' bare scalars, ...: protobuf converts each distinct value once."""
    cls = message_factory.GetMessageClass(descriptor)
    cache: dict[tuple[type, Any], bytes] = {}
    strings: dict[str, bytes] = {}  # Durations: the common case, without building a key

    def enc(v: Any) -> bytes:
        if type(v) is str:
            found = strings.get(v)
            if found is not None:
                return found
        key = (type(v), v)  # True == 1, but not for a BoolValue
        try:
            return cache[key]
        except KeyError:
            pass
        except TypeError:
            raise Unsupported from None
        try:
            body: bytes = json_format.ParseDict(v, cls()).SerializeToString(deterministic=True)
        except (json_format.ParseError, TypeError, ValueError):
            raise Unsupported from None
        if len(cache) >= 4096:
            cache.clear()
            strings.clear()
        cache[key] = body
        if type(v) is str:
            strings[v] = body
        return body

    return enc


_ANY_TYPES: dict[str, tuple[bytes, _Message]] = {}


def _any_type(type_url: Any) -> tuple[bytes, _Message]:
    found = _ANY_TYPES.get(type_url)
    if found is not None:
        return found
    if type(type_url) is not str:
        raise Unsupported
    descriptor = known_type(type_url)
    if descriptor is None or descriptor.full_name.startswith("google.protobuf."):
        raise Unsupported  # unknown, or a well-known type (its JSON form inside an Any has a "value")
    url = type_url.encode()
    found = _ANY_TYPES[type_url] = (b"\x0a" + _len(len(url)) + url, _message(descriptor))
    return found


def _any_payload(v: Any) -> bytes:
    if type(v) is not dict:
        raise Unsupported
    head, message = _any_type(v.get("@type"))
    body = message.encode({k: x for k, x in v.items() if k != "@type"})
    return head + b"\x12" + _len(len(body)) + body if body else head


_any = _memo(_any_payload)


def _struct_payload(v: Any) -> bytes:
    """A Struct (a direct response's json_format body): protobuf converts each distinct value once."""
    if type(v) is not dict:
        raise Unsupported
    try:
        body: bytes = json_format.ParseDict(v, _STRUCT()).SerializeToString(deterministic=True)
    except (json_format.ParseError, TypeError, ValueError):
        raise Unsupported from None
    return body


_STRUCT = message_factory.GetMessageClass(struct_pb2.Struct.DESCRIPTOR)
_struct = _memo(_struct_payload, limit=256)


def _payload_encoder(field: FieldDescriptor) -> tuple[int, Callable[[Any], bytes]]:
    """(wire type, value → payload) for one value of the field."""
    kind = field.type
    if kind in _VARINT_KINDS:
        return 0, _VARINT_KINDS[kind]
    if kind == _F.TYPE_ENUM:
        return 0, _enum(field)
    if kind in _FIXED_KINDS:
        return _FIXED_KINDS[kind]
    if kind == _F.TYPE_STRING:
        return 2, _string_payload
    if kind == _F.TYPE_MESSAGE:
        sub = field.message_type
        if sub.full_name in _SCALAR_WKT:
            return 2, _scalar_wkt(sub)
        if sub.full_name == "google.protobuf.Any":
            return 2, _any
        if sub.full_name == "google.protobuf.Struct":
            return 2, _struct
        if sub.full_name in _UNSUPPORTED_WKT:
            return 2, _unsupported
        return 2, _message(sub).encode
    return 2, _unsupported  # bytes (base64 in JSON), groups


def _plain(descriptor: Descriptor) -> bool:
    """A message whose JSON form is an object of its fields (not a well-known type's special form)."""
    name = descriptor.full_name
    return name not in _SCALAR_WKT and name not in _UNSUPPORTED_WKT and name != "google.protobuf.Any"


def _string_payload(v: Any) -> bytes:
    if type(v) is not str:
        raise Unsupported
    return v.encode()


def _unsupported(v: Any) -> bytes:
    raise Unsupported


def _string_field(tag: bytes, keep_default: bool) -> Encode:
    def enc(v: Any) -> bytes:
        if type(v) is not str:
            raise Unsupported
        body = v.encode()
        n = len(body)
        if not n and not keep_default:
            return b""
        return tag + (_SMALL[n] if n < 16384 else _varint(n)) + body

    return enc


def _repeated_string_field(tag: bytes) -> Encode:
    cache: dict[tuple[str, ...], bytes] = {}  # header name lists repeat from route to route

    def encode(v: list[Any]) -> bytes:
        out = []
        for item in v:
            if type(item) is not str:
                raise Unsupported
            body = item.encode()
            n = len(body)
            out.append(tag + (_SMALL[n] if n < 16384 else _varint(n)) + body)
        return b"".join(out)

    def enc(v: Any) -> bytes:
        if type(v) is not list:
            raise Unsupported
        key = tuple(v)
        try:
            found = cache.get(key)
        except TypeError:  # an unhashable item: not a string anyway
            raise Unsupported from None
        if found is None:
            found = encode(v)
            if len(cache) >= 4096:
                cache.clear()
            cache[key] = found
        return found

    return enc


def _field_encoder(field: FieldDescriptor) -> Encode:
    """value → the tagged field (b"" for a proto3 default that is left out)."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return _map_encoder(field)
    if field.type == _F.TYPE_STRING:
        tag = _tag(field.number, 2)
        return _repeated_string_field(tag) if field.is_repeated else _string_field(tag, field.has_presence)
    wire_type, payload = _payload_encoder(field)
    if field.is_repeated:
        if field.is_packed:
            packed_tag = _tag(field.number, 2)

            def packed(v: Any) -> bytes:
                if type(v) is not list:
                    raise Unsupported
                if not v:
                    return b""
                body = b"".join([payload(x) for x in v])
                return packed_tag + _len(len(body)) + body

            return packed
        tag = _tag(field.number, wire_type)
        if field.message_type is not None and _plain(field.message_type):
            plans, make = _message(field.message_type).plans, _message(field.message_type).plan

            def repeated_message(v: Any) -> bytes:  # _Message.encode inlined, as for plain_message
                if type(v) is not list:
                    raise Unsupported
                out = []
                for x in v:
                    if type(x) is not dict:
                        raise Unsupported
                    keys = tuple(x)
                    plan = plans.get(keys)
                    if plan is None:
                        plan = make(keys)
                    body = plan(x)
                    n = len(body)
                    out.append(tag + (_SMALL[n] if n < 16384 else _varint(n)) + body)
                return b"".join(out)

            return repeated_message
        if wire_type == 2:

            def repeated_delimited(v: Any) -> bytes:
                if type(v) is not list:
                    raise Unsupported
                out = []
                for x in v:
                    body = payload(x)
                    n = len(body)
                    out.append(tag + (_SMALL[n] if n < 16384 else _varint(n)) + body)
                return b"".join(out)

            return repeated_delimited

        def repeated(v: Any) -> bytes:
            if type(v) is not list:
                raise Unsupported
            return b"".join([tag + payload(x) for x in v])

        return repeated
    tag = _tag(field.number, wire_type)
    sub = field.message_type
    if sub is not None and _plain(sub):
        # A plain sub-message: _Message.encode inlined (one call less per level of nesting).
        plans, make = _message(sub).plans, _message(sub).plan

        def plain_message(v: Any) -> bytes:
            if type(v) is not dict:
                raise Unsupported
            keys = tuple(v)
            plan = plans.get(keys)
            if plan is None:
                plan = make(keys)
            body = plan(v)
            n = len(body)
            return tag + (_SMALL[n] if n < 16384 else _varint(n)) + body

        return plain_message
    if wire_type == 2:  # a message (strings are above, bytes are unsupported)

        def message(v: Any) -> bytes:
            body = payload(v)
            n = len(body)
            return tag + (_SMALL[n] if n < 16384 else _varint(n)) + body

        return message
    keep_default = field.has_presence
    default = b"\x00" if wire_type == 0 else None  # fixed-width zeros are refused by their payload encoder

    def scalar(v: Any) -> bytes:
        body = payload(v)
        if body == default and not keep_default:
            return b""
        return tag + body

    return scalar


def _map_encoder(field: FieldDescriptor) -> Encode:
    entry = field.message_type
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    if key_field.type != _F.TYPE_STRING:
        return _unsupported  # JSON map keys are strings; other key types are json_format's business
    tag = _tag(field.number, 2)
    value_tag = _tag(2, _payload_encoder(value_field)[0])
    value_payload = _payload_encoder(value_field)[1]
    value_delimited = value_field.type in (_F.TYPE_STRING, _F.TYPE_MESSAGE)

    def enc(v: Any) -> bytes:
        if type(v) is not dict or not all(type(key) is str for key in v):
            raise Unsupported
        out = []
        for key in sorted(v):  # deterministic serialization: by key (code point order = UTF-8 byte order)
            k = key.encode()
            item = v[key]
            if item is None:
                raise Unsupported
            body = value_payload(item)
            value = value_tag + (_len(len(body)) + body if value_delimited else body)
            entry_body = b"\x0a" + _len(len(k)) + k + value
            out.append(tag + _len(len(entry_body)) + entry_body)
        return b"".join(out)

    # Maps of messages (typed_per_filter_config, ...) are mostly the same from route to route.
    return _memo(enc) if value_field.type == _F.TYPE_MESSAGE else enc


def encode(resource: dict[str, Any], message: type[Message]) -> bytes:
    """The fast path only; raises Unsupported when json_format has to decide."""
    return _message(message.DESCRIPTOR).encode(resource)


def serializer(message: type[Message]) -> Callable[[dict[str, Any]], bytes]:
    """`serialize` for one message type, its field table looked up once."""
    table = _message(message.DESCRIPTOR)

    def serialize_one(resource: dict[str, Any]) -> bytes:
        try:
            return table.encode(resource)
        except Exception:  # Unsupported, or a value json_format judges (it raises CompileError if invalid)
            body: bytes = to_proto(resource, message).SerializeToString(deterministic=True)
            return body

    return serialize_one


def serialize(resource: dict[str, Any], message: type[Message]) -> bytes:
    """Deterministic wire bytes of a resource dict: the fast path, else json_format (raises CompileError)."""
    return serializer(message)(resource)

