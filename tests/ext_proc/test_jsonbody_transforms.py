"""Pure cores: strict JSON parsing, the JSONPath subset, templates, query and body transforms."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ext_proc import jsonbody
from ext_proc.config import (
    REQUEST_VARS,
    RESPONSE_VARS,
    RequestTransforms,
    ResponseTransforms,
    parse_jsonpath,
)
from ext_proc.templates import Context, Template, iso_time
from ext_proc.transforms import RequestTransformer, ResponseTransformer, add_query

DOC: dict[str, Any] = {"request": {"userId": "u1", "tags": ["a", "b"]},
                       "items": [{"id": 1, "password": "x"}, {"id": 2, "password": "y"}]}


@pytest.mark.parametrize(("path", "expected"), [
    ("$.request.userId", "u1"),
    ("$['request']['userId']", "u1"),
    ("$.request.tags[0]", "a"),
    ("$.request.tags[-1]", "b"),
    ("$.items[*].id", [1, 2]),
    ("$.items.*.id", [1, 2]),
    ("$.request.tags[*]", ["a", "b"]),
    ("$.nope", jsonbody.MISSING),
    ("$.request.tags[5]", jsonbody.MISSING),
    ("$", DOC),
])
def test_select(path: str, expected: Any) -> None:
    assert jsonbody.select(DOC, parse_jsonpath(path)) == expected


@pytest.mark.parametrize("bad", ["request.userId", "$..deep", "$.a[?(@.x)]", "$.a[1:2]", "$[", "$.a b"])
def test_unsupported_jsonpath_is_a_config_error(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_jsonpath(bad)


def test_remove_names_at_any_depth_inside_arrays() -> None:
    doc = {"password": 1, "a": [{"password": 2, "b": [{"secret_key": 3, "keep": 4}]}], "c": {"internal_id": 5}}
    assert jsonbody.remove_names(doc, frozenset({"password", "secret_key", "internal_id"})) == 4
    assert doc == {"a": [{"b": [{"keep": 4}]}], "c": {}}


def test_remove_path_and_set_field() -> None:
    doc: dict[str, Any] = {"items": [{"id": 1, "pw": "x"}, {"id": 2, "pw": "y"}], "n": [1, 2, 3]}
    assert jsonbody.remove_path(doc, parse_jsonpath("$.items[*].pw")) == 2
    assert jsonbody.remove_path(doc, parse_jsonpath("$.n[0]")) == 1
    assert doc == {"items": [{"id": 1}, {"id": 2}], "n": [2, 3]}
    assert jsonbody.set_field(doc, ("meta", "ts"), "t")
    assert doc["meta"] == {"ts": "t"}
    assert not jsonbody.set_field(doc, ("n", "x"), 1)  # a list is in the way


@pytest.mark.parametrize(("body", "reason"), [
    (b"\xff{}", "invalid_utf8"),
    (b"[" * 100 + b"]" * 100, "too_deep"),
    (b"[" * 100_000, "too_deep"),
    (b'{"a": 1e400}', "number_out_of_range"),
    (b'{"a": -1e400}', "number_out_of_range"),
    (b'{"a": ' + b"1" * 5000 + b"}", "number_out_of_range"),
    (b'{"a": 1, "a": 2}', "duplicate_key"),
    (b'{"a": {"b": 1, "b": 1}}', "duplicate_key"),
    (b'{"a": [1, 2', "invalid_json"),
    (b"", "invalid_json"),
    (b'{"a": Infinity}', "non_standard_constant"),
    (b'{"a": "\\ud800"}', "lone_surrogate"),                 # Python reads it; UTF-8 cannot carry it
    (b'{"\\uDC00x": 1}', "lone_surrogate"),                   # in a key, upper case
    (b'["\\ude00\\ud83d"]', "lone_surrogate"),               # a pair the wrong way round is two lone ones
    (b"\xef\xbb\xbf{}", "byte_order_mark"),                   # RFC 8259 8.1: MUST NOT be sent
    (b"\xff\xfe{\x00}\x00", "invalid_utf8"),                   # UTF-16
    (b"\xed\xa0\x80", "invalid_utf8"),                         # a surrogate encoded as UTF-8 (CESU)
    (b'"\xc0\xae"', "invalid_utf8"),                             # overlong
])
def test_hostile_json_has_a_named_outcome(body: bytes, reason: str) -> None:
    with pytest.raises(jsonbody.BadJson) as caught:
        jsonbody.parse(body, max_depth=64)
    assert caught.value.reason == reason


@pytest.mark.parametrize(("body", "doc"), [
    (b'{"a": "\\ud83d\\ude00"}', {"a": "\U0001f600"}),         # a pair is one character
    (b'{"a": "\\\\ud800"}', {"a": "\\ud800"}),                 # an escaped backslash, then text
    (b'{"a": ' + b"9" * 4300 + b"}", {"a": int("9" * 4300)}),   # the longest integer taken
    (b"[1e-400, -0]", [0.0, 0]),
    (b"[]", []),
    (b'"text"', "text"),
])
def test_strict_parse_accepts_what_it_can_write_back(body: bytes, doc: Any) -> None:
    assert jsonbody.parse(body, max_depth=64) == doc
    jsonbody.dump(jsonbody.parse(body, max_depth=64)).decode("utf-8")


@pytest.mark.parametrize(("body", "doc", "written"), [
    (b'\xef\xbb\xbf{"a": 1}', {"a": 1}, b'{"a":1}'),                   # ignored, never written (8.1)
    (b'{"a": 1, "a": 2}', {"a": 2}, b'{"a":2}'),                         # the last wins, as JSON.parse
    (b'{"a": "\\ud800\xc3\xa9"}', {"a": "\ud800\xe9"}, b'{"a":"\\ud800\\u00e9"}'),  # escaped, ASCII
])
def test_lenient_parse_for_responses_and_its_dump(body: bytes, doc: Any, written: bytes) -> None:
    assert jsonbody.parse(body, max_depth=64, strict=False) == doc
    assert jsonbody.dump(doc) == written
    assert jsonbody.parse(written, max_depth=64, strict=False) == doc


@pytest.fixture
def process_int_limit() -> Iterator[None]:
    before = sys.get_int_max_str_digits()
    yield
    sys.set_int_max_str_digits(before)


@pytest.mark.usefixtures("process_int_limit")
@pytest.mark.parametrize("limit", [0, 640])
def test_integer_limit_does_not_depend_on_the_process_wide_one(limit: int) -> None:
    # 0: no process-wide limit (converting a 1 MB integer would cost seconds); 640: the lowest allowed.
    sys.set_int_max_str_digits(limit)
    with pytest.raises(jsonbody.BadJson) as caught:
        jsonbody.parse(b"[" + b"9" * 100_000 + b"]", max_depth=64)
    assert caught.value.reason == "number_out_of_range"
    if limit:  # a lower process-wide limit holds too, as a named refusal (never a ValueError, a 500)
        with pytest.raises(jsonbody.BadJson):
            jsonbody.parse(b"[" + b"9" * 1000 + b"]", max_depth=64)
    assert jsonbody.dump(jsonbody.parse(b"[" + b"9" * 600 + b"]", max_depth=64)) == b"[" + b"9" * 600 + b"]"


def test_parse_accepts_ordinary_json_and_dump_is_compact_utf8() -> None:
    doc = jsonbody.parse('{"a": [1, 2.5, "é", null, true]}'.encode(), max_depth=3)
    assert jsonbody.dump(doc) == '{"a":[1,2.5,"é",null,true]}'.encode()
    assert jsonbody.is_json("application/json; charset=utf-8")
    assert jsonbody.is_json("application/problem+json")
    assert not jsonbody.is_json("text/json-ish")


def test_templates_render_and_literal_fast_path() -> None:
    ctx = Context(now=0.5, client_ip="10.0.0.1", request_id="rid", response_time_ms=12)
    assert Template("1.0", REQUEST_VARS).literal == "1.0"
    assert Template("${client_ip}/${request_id}", REQUEST_VARS).render(ctx) == "10.0.0.1/rid"
    assert Template("${response_time_ms}ms", RESPONSE_VARS).render(ctx) == "12ms"
    assert Template("${now()}", REQUEST_VARS).render(ctx) == "1970-01-01T00:00:00.500Z" == iso_time(0.5)
    uuid = Template("${uuid()}", REQUEST_VARS)
    assert re.fullmatch(r"[0-9a-f-]{36}", uuid.render(ctx)) and uuid.render(ctx) != uuid.render(ctx)
    with pytest.raises(ValueError, match="unknown template variable"):
        Template("${response_time_ms}", REQUEST_VARS)


@pytest.mark.parametrize(("path", "params", "expected"), [
    ("/a", [("version", "v1", False)], "/a?version=v1"),
    ("/a?x=1", [("version", "v1", False)], "/a?x=1&version=v1"),
    ("/a?version=v0&x=1", [("version", "v1", False)], "/a?x=1&version=v1"),
    ("/a?version=v0", [("version", "v1", True)], "/a?version=v0"),
    ("/a", [("q", "a b&c", False)], "/a?q=a%20b%26c"),
])
def test_add_query(path: str, params: list[tuple[str, str, bool]], expected: str) -> None:
    assert add_query(path, params) == expected


def test_request_transformer_leaves_native_edits_to_envoy() -> None:
    config = RequestTransforms.model_validate({
        "add_headers": {"X-Static": "1", "X-Id": {"value": "${uuid()}", "if_absent": True},
                        "X-When": "${now()}"},
        "remove_headers": ["X-Internal-Token"], "rename_headers": {"Authorization": "X-Auth-Token"},
        "add_query": {"version": "v1"}})
    native = RequestTransformer(config, native=True)
    sets, removes = native.headers({":path": "/p", "authorization": "Bearer t"}, Context(now=0.0))
    assert {name for name, _, _ in sets} == {"x-when", "x-auth-token", ":path"}
    assert ("x-auth-token", "Bearer t", False) in sets and (":path", "/p?version=v1", False) in sets
    assert removes == ()  # the route removes x-internal-token and authorization, after ext_authz
    alone = RequestTransformer(config, native=False)
    sets, removes = alone.headers({":path": "/p", "x-id": "mine"}, Context(now=0.0))
    assert {name for name, _, _ in sets} == {"x-static", "x-when", ":path"}  # x-id kept (if_absent)
    assert removes == ("x-internal-token",)  # Envoy's mutation_rules forbid us authorization


def test_response_transformer_body() -> None:
    config = ResponseTransforms.model_validate({
        "remove_json_fields": ["password", "$.meta.internal_id"],
        "add_json_fields": {"api_version": "v1", "meta.generated": "${now()}", "count": 2}})
    transformer = ResponseTransformer(config)
    doc: dict[str, Any] = {"users": [{"password": "x"}], "meta": {"internal_id": 1, "password": 2}}
    assert transformer.body(doc, Context(now=0.0)) == 3
    assert doc == {"users": [{}], "meta": {"generated": "1970-01-01T00:00:00.000Z"}, "api_version": "v1",
                   "count": 2}
    top_list: list[Any] = [{"password": 1}]
    transformer.body(top_list, Context(now=0.0))  # fields are added to objects only
    assert top_list == [{}]
