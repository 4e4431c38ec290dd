"""Protobuf wire-format pieces: messages assembled from already-serialized parts without re-parsing them.

Protobuf concatenation is merging, and a repeated field is one tagged entry per element, so a route
table of 10,000 cached routes is built by joining bytes instead of copying messages.
"""

from __future__ import annotations


def _varint(value: int) -> bytes:
    """A non-negative integer as a base-128 varint."""
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


SMALL = [_varint(i) for i in range(1 << 14)]  # the varints of 0..16383 (most lengths and tags), looked up


def varint(value: int) -> bytes:
    return SMALL[value] if 0 <= value < 16384 else _varint(value)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or embedded message)."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


def text(number: int, value: str) -> bytes:
    return field(number, value.encode()) if value else b""


def any_message(type_url: str, body: bytes) -> bytes:
    """google.protobuf.Any: type_url = 1, value = 2."""
    return text(1, type_url) + field(2, body)
