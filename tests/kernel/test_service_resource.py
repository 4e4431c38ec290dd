"""The service resource envelope: canonical bytes, round trip, and clear refusals of what it cannot read."""

from __future__ import annotations

import re

import pytest

from outrider.protos.outrider.config.v1.service_config_pb2 import ExtAuthzConfig, ExtProcConfig
from outrider.service_resource import (
    EXT_AUTHZ_TYPE_URL,
    EXT_PROC_TYPE_URL,
    RATELIMIT_TYPE_URL,
    SCHEMA,
    ResourceError,
    decode,
    encode,
    pack,
    unpack,
)


def test_type_urls_name_our_messages() -> None:
    assert EXT_AUTHZ_TYPE_URL == "type.googleapis.com/outrider.config.v1.ExtAuthzConfig"
    assert RATELIMIT_TYPE_URL == "type.googleapis.com/outrider.config.v1.RateLimitServiceConfig"
    assert EXT_PROC_TYPE_URL == "type.googleapis.com/outrider.config.v1.ExtProcConfig"


def test_round_trip_and_canonical_json() -> None:
    payload = {"b": [1, {"z": 1, "a": "é"}], "a": None}
    data = encode(EXT_PROC_TYPE_URL, "v7", payload)
    message = ExtProcConfig.FromString(data)
    assert message.schema == SCHEMA and message.version == "v7"
    # sorted keys, no spaces, UTF-8 kept as is: the same payload is always the same bytes.
    assert message.payload_json == '{"a":null,"b":[1,{"a":"é","z":1}]}'
    assert encode(ExtProcConfig, "v7", {"a": None, "b": [1, {"a": "é", "z": 1}]}) == data
    assert decode(EXT_PROC_TYPE_URL, data) == ("v7", payload)
    assert unpack(ExtProcConfig, pack(ExtProcConfig, "v7", payload)) == ("v7", payload)


@pytest.mark.parametrize(("message", "needle"), [
    (ExtProcConfig(schema=SCHEMA + 1, version="v", payload_json="{}"), f"schema {SCHEMA + 1} is not supported"),
    (ExtProcConfig(schema=SCHEMA, version="v", payload_json="{not json"), "not valid JSON"),
    (ExtProcConfig(schema=SCHEMA, version="v", payload_json="[1]"), "must hold a JSON object"),
])
def test_refuses_bad_envelopes(message: ExtProcConfig, needle: str) -> None:
    with pytest.raises(ResourceError, match=needle):
        decode(EXT_PROC_TYPE_URL, message.SerializeToString())


def test_refuses_garbage_and_wrong_types() -> None:
    with pytest.raises(ResourceError, match="not a valid protobuf"):
        decode(EXT_PROC_TYPE_URL, b"\xff\xff\xff")
    with pytest.raises(ResourceError, match=re.escape("where 'type.googleapis.com/outrider.config.v1.ExtProcConfig'")):
        unpack(EXT_PROC_TYPE_URL, pack(ExtAuthzConfig, "v", {}))
    with pytest.raises(ResourceError, match="unknown outrider service resource type"):
        encode("type.googleapis.com/nope", "v", {})
    with pytest.raises(ValueError):
        encode(EXT_PROC_TYPE_URL, "v", {"x": float("nan")})   # not JSON: never on the wire
