"""The Lua response JSON policy (ext_proc/lua/json_policy.lua, LuaJIT via lupa) against ext_proc's Python path:
the same bytes, or the same refusal reason, for >= 2,000 generated and hand-written bodies."""

from __future__ import annotations

import json
import math
import random
import struct
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ext_proc.config import ResponseTransforms, RouteSettings, TransformationsConfig, route_settings
from ext_proc.native_json import json_policy_lua, response_params
from outrider.config.loader import load_config
from tests.ext_proc.native_json_harness import (
    EXAMPLE_CONFIG,
    NOW_MS,
    POLICIES,
    LuaPolicy,
    params_for,
    python_answer,
)

HAND_WRITTEN: list[bytes] = [
    # framing, whitespace, BOM
    b"", b" ", b"{}", b"[]", b" \t\n\r{ } \n", b"\xef\xbb\xbf{}", b"\xef\xbb\xbf\xef\xbb\xbf{}", b"\xef\xbb\xbf",
    b"{} x", b"{}{}", b"\x0c{}", b"{}\x00", b'"just a string"', b"1", b"-0", b"null", b"true", b"false",
    b"nul", b"truex", b"[true false]", b"[1,]", b"[,1]", b'{"a":1,}', b'{"a" 1}', b"{'a':1}", b'{"a":1 "b":2}',
    # constants Python refuses by name, and their near misses
    b"NaN", b"[NaN]", b"Infinity", b"-Infinity", b"[1, -Infinity]", b"[Infinity, x]", b"[x, NaN]", b"Nan",
    b"-Inf", b"[-]", b"-", b"+1", b"--1",
    # numbers of every shape
    b"0", b"00", b"01", b"-01", b"1.", b"1.e5", b".5", b"1e", b"1e+", b"1E-", b"1e5", b"1E5", b"1e+05", b"-1e-5",
    b"0.0", b"-0.0", b"0e0", b"-0e-0", b"1.0", b"1.50", b"100.0", b"1e16", b"1e15", b"123456789012345678",
    b"1.7976931348623157e308", b"1.7976931348623159e308", b"1e308", b"1e309", b"-1e400", b"1e-400", b"-1e-400",
    b"5e-324", b"2.5e-324", b"2e-324", b"4.9406564584124654e-324", b"2.2250738585072014e-308",
    b"2.2250738585072011e-308", b"0.1", b"0.30000000000000004", b"1e-4", b"1e-5", b"0.0001", b"0.00001",
    b"9007199254740993", b"9007199254740993.0", b"123456789.123456789", b"1e22", b"1e23", b"8.98846567431158e307",
    b"[1" + b"0" * 4299 + b"]", b"[1" + b"0" * 4300 + b"]", b"[-1" + b"0" * 4299 + b"]", b"[-1" + b"0" * 4300 + b"]",
    b'["' + b"1" * 5000 + b'", 1]', b"[1." + b"1" * 5000 + b"]", b"[" + b"9" * 400 + b"e-400]",
    b"0." + b"0" * 400 + b"1", b"1" + b"0" * 308 + b".0", b"1" + b"0" * 309 + b".0",
    # strings and escapes
    b'"\\u00e9"', b'"\\u00E9"', b'"\\ud83d\\ude00"', b'"\\ud83d"', b'"\\ude00"', b'"\\ude00\\ud83d"',
    b'"\\ud83d\\u0041"', b'"\\ud83dx"', b'"\\ud83d\\ud83d\\ude00"', b'"\\ud800\\udc00"', b'"\\udbff\\udfff"',
    b'"\\u0000"', b'"\\u001f\\u007f\\u0080"', b'"\\/\\b\\f\\n\\r\\t\\"\\\\"', b'"\\a"', b'"\\u12"', b'"\\u12g4"',
    b'"\\x41"', b'"\\U0041"', b'"\\', b'"abc', b'"a\x00b"', b'"a\x1fb"', b'"a\x7fb"', b'"a\tb"', b'"a\nb"',
    '"é😀\u2028\u2029"'.encode(), b'{"\\ud800":1}', b'{"password":"\\ud800","k":2}', b'["\\ud800", "\xc3\xa9"]',
    b'{"k":"\\ud800","password":1}', b'["\\udfff\xc3\xa9\xf0\x9f\x98\x80\x7f"]',
    # invalid UTF-8 (Python's strict decoder) anywhere, even where JSON is already broken
    b'"\xff"', b'"\xc0\x80"', b'"\xc1\xbf"', b'"\xe0\x80\x80"', b'"\xed\xa0\x80"', b'"\xed\x9f\xbf"',
    b'"\xf0\x8f\xbf\xbf"', b'"\xf4\x90\x80\x80"', b'"\xf5\x80\x80\x80"', b'"\xc3"', b'"\xe2\x82"', b"x\xff",
    b'"\xef\xbf\xbf"', b'"\xf4\x8f\xbf\xbf"', b"\xef\xbb", b'{"a":"\x80"}', b"\xed\xa0\x80",
    # duplicates: the last wins at the first one's place; removal and additions
    b'{"a":1,"b":2,"a":3}', b'{"password":1,"password":2}', b'{"timestamp":1,"x":2}', b'{"api_version":{"x":1}}',
    b'{"meta":1}', b'{"meta":{"at":0,"q":1}}', b'{"a":{"b":1}}', b'{"a":{"b":{"c":{"d":1}}}}', b'{"x":[]}',
    b'{"list":[{"password":1,"secret_key":{"internal_id":2}}]}', b'[{"password":1},[{"secret_key":2}]]',
    b'{"a":1,"a":{"password":2,"k":3}}', b'{"\xc3\xa9":1,"\\u00e9":2}', b'{"e\\u0301":1,"\xc3\xa9":2}',
    b'{"":1,"":2}', b'{"password":{"password":{"password":1}}}',
    # depth: 256 containers pass, 257 are refused; far deeper, Python's recursion stops first
    b"[" * 256 + b"]" * 256, b"[" * 257 + b"]" * 257, b'{"a":' * 256 + b"1" + b"}" * 256,
    b'{"a":' * 257 + b"1" + b"}" * 257, b"[" * 300 + b"]" * 299, b"[" * 5000, b"[" * 5000 + b"]" * 5000,
    b"[" * 500 + b"]" * 500 + b"x", b"x" + b"[" * 5000, b"[" * 3000 + b"x",
]


def _float_texts(rng: random.Random) -> Iterator[str]:
    for _ in range(150):
        x = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(x):
            yield repr(x)
            yield f"{x:.17g}"
            yield f"{x:.25e}"
    for _ in range(150):
        sign, whole, frac = rng.choice(["", "-"]), rng.randint(0, 10**rng.randint(1, 25)), rng.randint(0, 10**25)
        yield f"{sign}{whole}.{frac}e{rng.randint(-330, 330)}"
    for e in range(-1074, 1024, 7):  # powers of two: the interval below them is half the one above
        yield repr(2.0 ** e)
        yield f"{2.0 ** e:.17e}"
    for _ in range(60):
        yield repr(rng.uniform(-1e6, 1e6))
        yield repr(rng.random() * 10 ** rng.randint(-20, 20))


KEYS = ["a", "b", "x", "id", "password", "internal_id", "secret_key", "api_version", "timestamp", "meta", "list",
        "é", "key with space", "\u00e9", "😀", "\\u0041", "\\ud800", "\\n", "", "password ", "Password"]
STRINGS = ["", "text", "é", "😀", "\\u00e9", "\\ud83d\\ude00", "\\ud83d", "\\udc00", "\\n\\t\\\"", "\\u0000",
           "\\u007f", "\x7f", "<script>", "\u2028", "\\/", "tab\\there", "quote\\\"", "ü" * 10]


def _gen(rng: random.Random, depth: int) -> str:
    """A random JSON text: nested values, duplicate keys, whitespace, every number and string shape."""
    ws = rng.choice(["", "", "", " ", "\n  ", "\t", "\r\n"])
    kind = rng.random()
    if depth > 5 or kind < 0.35:
        pick = rng.random()
        if pick < 0.3:
            return '"' + rng.choice(STRINGS) + '"'
        if pick < 0.55:
            return rng.choice([str(rng.randint(-10**6, 10**6)), str(rng.randint(-10**30, 10**30)), "0", "-0",
                               str(rng.getrandbits(60))])
        if pick < 0.8:
            return rng.choice(FLOATS)
        return rng.choice(["true", "false", "null"])
    if kind < 0.65:
        items = [_gen(rng, depth + 1) for _ in range(rng.randint(0, 5))]
        return "[" + ws + ("," + ws).join(items) + ws + "]"
    members = []
    for _ in range(rng.randint(0, 6)):
        key = rng.choice(KEYS)
        members.append(f'"{key}"{ws}:{ws}{_gen(rng, depth + 1)}')
        if rng.random() < 0.1:  # a duplicate of this key further on
            members.append(f'"{key}":{_gen(rng, depth + 1)}')
    return "{" + ws + ("," + ws).join(members) + ws + "}"


FLOATS = list(_float_texts(random.Random(7)))


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    pos = rng.randrange(len(raw) + 1)
    choice = rng.random()
    if choice < 0.3:
        return raw[:pos]  # truncated
    if choice < 0.5:
        return raw[:pos] + bytes([rng.randrange(256)]) + raw[pos + 1:]  # one byte replaced, UTF-8 broken too
    if choice < 0.7:
        return raw[:pos] + rng.choice([b",", b"]", b"}", b":", b'"', b"\\", b"\x00", b"NaN", b"1e999"]) + raw[pos:]
    return raw[:pos] + raw[pos + 1:]  # one byte dropped


def corpus() -> list[bytes]:
    rng = random.Random(2026)
    bodies = list(HAND_WRITTEN)
    bodies += [f"[{text}]".encode() for text in FLOATS]
    generated = [_gen(rng, 0).encode() for _ in range(1200)]
    bodies += generated
    bodies += [_mutate(rng, rng.choice(generated)) for _ in range(600)]
    bodies += [b"\xef\xbb\xbf" + g for g in generated[:50]]
    return bodies


CORPUS = corpus()
LUA = LuaPolicy()


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_lua_matches_python_on_the_corpus(policy: str) -> None:
    assert len(CORPUS) >= 2000
    params = LUA.table(params_for(POLICIES[policy]))
    mismatches = []
    refused = 0
    for raw in CORPUS:
        expected = python_answer(raw, POLICIES[policy])
        refused += not expected[0]
        got = LUA.answer(raw, params)
        if got != expected:
            mismatches.append((raw[:200], expected, got))
    assert mismatches == [], f"{len(mismatches)} of {len(CORPUS)} differ, first: {mismatches[:3]}"
    assert 200 < refused < len(CORPUS) - 1000  # both outcomes are well covered


def test_every_refusal_reason_is_covered() -> None:
    answers = [python_answer(raw, POLICIES["example"]) for raw in CORPUS]
    reasons = {reason for ok, reason in answers if not ok}
    assert reasons == {"invalid_utf8", "invalid_json", "too_deep", "number_out_of_range", "non_standard_constant"}


def test_deep_documents_around_python_recursion_limit() -> None:
    """Nesting far past RESPONSE_MAX_DEPTH with a syntax error after it: Python's recursive scanner stops
    (RecursionError → too_deep) before it reads the error; the Lua stops at RECURSION_DEPTH the same way."""
    params = LUA.table(params_for(POLICIES["example"]))
    limit = sys.getrecursionlimit()
    for depth in (300, 800, 900, limit + 10, 3000):
        for raw in (b"[" * depth + b"x", b'{"a":' * depth + b"x", b'[{"a":' * (depth // 2) + b"x"):
            assert LUA.answer(raw, params) == python_answer(raw, POLICIES["example"]), (depth, raw[:10])


def test_the_clock_renders_as_iso_time() -> None:
    """templates.iso_time over dates that stress a civil-date conversion (leap days, centuries, ms)."""
    params = LUA.table(params_for(ResponseTransforms(add_json_fields={"t": "${now()}"})))
    for ms in (0, 951_782_400_000, 951_868_799_999, 4_107_542_400_001, 1_709_208_000_999, NOW_MS, 7_258_118_399_999):
        assert LUA.answer(b"{}", params, ms) == python_answer(b"{}", params_policy(), ms), ms


def params_policy() -> ResponseTransforms:
    return ResponseTransforms(add_json_fields={"t": "${now()}"})


def test_response_params_of_the_example_route() -> None:
    config = load_config(EXAMPLE_CONFIG)
    route = next(r for r in config.routes if r.name == "messages")
    params = response_params(route_settings(route, config), config)
    assert params == {
        "remove": ["password", "internal_id", "secret_key"],
        "add": [{"path": ["api_version"], "parts": [{"text": "v1"}]},
                {"path": ["timestamp"], "parts": [{"var": "now()"}]}],
        "max_body_bytes": 1048576, "hold_bytes": 1048576, "oversize_reject": False,
        "namespace": "outrider.native_policy", "keep_headers": ["x-response-time", "x-cache-status"],
    }
    json.dumps(params)  # route metadata is a JSON-able Struct


@pytest.mark.parametrize("response", [
    {"add_json_fields": {"who": "${client_ip}"}},
    {"add_json_fields": {"id": "${uuid()}"}},
    {"add_json_fields": {"rid": "${request_id}"}},
    {"add_json_fields": {"ms": "${response_time_ms}"}},
    {"add_json_fields": {"copy": "$.user.id"}},
    {"remove_json_fields": ["$.items[*].secret"]},
    {"add_headers": {"X-At": "${now()}"}},
    {"add_json_fields": {"x": float("nan")}},
    {"add_json_fields": {"x": float("-inf")}},
])
def test_routes_the_lua_cannot_do_exactly_stay_with_ext_proc(response: dict[str, Any]) -> None:
    config = load_config(EXAMPLE_CONFIG)
    settings = RouteSettings(TransformationsConfig(response=ResponseTransforms(**response)), None, None)
    assert response_params(settings, config) is None


def test_the_source_defines_no_global() -> None:
    """nreq concatenates the source into its own filter script: it must set no global (Envoy's Lua state is
    shared by every stream of a worker) and read none but Lua's own."""
    runtime = LuaPolicy().runtime
    answer = runtime.execute(b"""
        local source = ...
        local env = setmetatable({}, {
          __index = function(_, name)
            local known = _G[name]
            if known == nil then error("reads global " .. tostring(name)) end
            return known
          end,
          __newindex = function(_, name) error("sets global " .. tostring(name)) end,
        })
        local chunk = assert(loadstring(source .. "\\nreturn outrider_json_response, outrider_json_transform"))
        setfenv(chunk, env)
        local response, transform = chunk()
        return type(response) == "function" and type(transform) == "function" and select(2, transform("{}", {}, 0))
    """, json_policy_lua().encode())
    assert answer == b"{}"


FAKE_HANDLE = b"""
local response, headers_in, chunks = ...
local headers = {}
for k, v in pairs(headers_in) do headers[k] = v end
local H = {}
function H:get(k) return headers[k] end
function H:replace(k, v) headers[k] = v end
function H:remove(k) headers[k] = nil end
setmetatable(H, {__pairs = function() return pairs(headers) end})
local touched = false
local handle = {}
function handle:headers() return H end
function handle:body() touched = true; return nil end
function handle:bodyChunks() touched = true; return function() return nil end end
function handle:streamInfo()
  return {dynamicMetadata = function() return {get = function() return {request_id = "r"} end} end}
end
function handle:timestamp() return 0 end
function handle:logWarn() end
return function(p)
  response(handle, p)
  return headers[":status"], touched
end
"""


@pytest.mark.parametrize(("status", "touched"), [("204", False), ("304", False), ("200", True)])
def test_statuses_without_a_body_are_left_alone(status: str, touched: bool) -> None:
    """A 204 or 304 has no body whatever its content-length says (RFC 9110 §6.4.1): ext_proc sees its headers
    end the stream and leaves it; the Lua must not refuse it as oversize (pure: a fake Envoy handle)."""
    runtime = LuaPolicy().runtime
    response = runtime.execute(json_policy_lua().encode() + b"\nreturn outrider_json_response")
    lua = LuaPolicy()
    lua.runtime = runtime
    headers = lua.table({":status": status, "content-type": "application/json", "content-length": "999999999"})
    run = runtime.execute(FAKE_HANDLE, response, headers, None)
    params = lua.table({**params_for(POLICIES["example"]), "oversize_reject": True})
    got_status, got_touched = run(params)
    assert (got_status.decode(), bool(got_touched)) == (status if not touched else "502", touched)
