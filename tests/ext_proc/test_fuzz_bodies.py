"""Fuzz target for the JSON body path (hypothesis, bounded): random bytes and JSON-ish documents through
the session's request and response body handling never raise, and only ever give the documented answers."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_proc import jsonbody
from ext_proc.events import (
    CacheResult,
    Immediate,
    Note,
    Reply,
    RequestBody,
    RequestHeaders,
    ResponseBody,
    ResponseHeaders,
)
from ext_proc.plan import DEFAULT_ROUTE, RoutePlan
from ext_proc.service import build_immediate, build_reply
from ext_proc.session import Session
from tests.ext_proc.conftest import ext_proc_config_dict, plans_from


def _plans() -> dict[str, RoutePlan]:
    data = ext_proc_config_dict()
    # A client's X-Request-ID written into the body: header bytes that are not UTF-8 must not make it
    # a lone surrogate in the JSON we write.
    data["routes"].append({"name": "fuzz-request-id", "match": {"prefix": "/fuzz/"}, "upstream": "demo",
                           "public": True, "transformations": {"request": {"json_body": {"rid": "${request_id}"}}}})
    return plans_from(data)


PLANS = _plans()
# Every kind of request body work: mapping (messages, client-ip, request-id), validation only (public),
# both with oversize pass/reject (lab-lenient, lab-strict), and the default plan (an Envoy config of one's own).
REQUEST_ROUTES = ["messages", "public", "users", "lab-strict", "lab-lenient", "lab-client-ip", "fuzz-request-id",
                  DEFAULT_ROUTE]
# users removes these from every response at any depth: the redaction must never be skipped.
REMOVED = {"password", "internal_id", "secret_key"}
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- JSON-ish documents: grammar fragments that hit each hostile class, recombined ----------------------

_scalars = st.sampled_from([
    b"null", b"true", b"false", b"0", b"-0", b"1.5", b"-12", b"1e5", b"1e-400", b"1e999", b"-1e400",
    b"NaN", b"Infinity", b"-Infinity", b"01", b"1.", b".5", b"+1", b"0x10", b"tru",
])
_long_ints = st.integers(4290, 4310).map(lambda n: b"-" * (n % 2) + b"9" * n)
_escapes = st.sampled_from([
    rb"\ud800", rb"\udfff", rb"\udbff\udfff", rb"\ud83d\ude00", rb"\ude00\ud83d", rb"\u0000", rb"\n", rb"\"",
    rb"\\", rb"\u003cscript>", rb"\x41", rb"\u12", rb"\/",
])
_plain_text = st.text(max_size=6).map(lambda t: t.encode("utf-8"))
_raw_bytes = st.binary(max_size=4)
_strings = st.lists(st.one_of(_plain_text, _escapes, _raw_bytes), max_size=4).map(
    lambda parts: b'"' + b"".join(parts) + b'"')
# Few names: duplicates happen, and the names a route removes or maps appear.
_keys = st.one_of(st.sampled_from([b'"a"', b'"password"', b'"request"', b'"userId"', b'"\\ud800"']), _strings)
_ws = st.sampled_from([b"", b" ", b"\n", b"\t", b"\r\n"])


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    arrays = st.lists(children, max_size=4).map(lambda xs: b"[" + b",".join(xs) + b"]")
    objects = st.lists(st.tuples(_keys, _ws, children), max_size=4).map(
        lambda kvs: b"{" + b",".join(k + w + b":" + v for k, w, v in kvs) + b"}")
    return st.one_of(arrays, objects)


_values = st.recursive(st.one_of(_scalars, _long_ints, _strings), _containers, max_leaves=12)
_deep = st.tuples(st.integers(1, 1200), st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]")]),
                  st.booleans()).map(lambda t: t[1][0] * t[0] + b"1" + t[1][1] * (t[0] if t[2] else t[0] // 2))


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    doc = draw(st.one_of(_values, _deep))
    how = draw(st.sampled_from(["none", "bom", "truncate", "flip", "trailing", "utf16"]))
    if how == "bom":
        return b"\xef\xbb\xbf" + doc
    if how == "truncate" and doc:
        return doc[:draw(st.integers(0, len(doc) - 1))]
    if how == "flip" and doc:
        at = draw(st.integers(0, len(doc) - 1))
        return doc[:at] + bytes([draw(st.integers(0, 255))]) + doc[at + 1:]
    if how == "trailing":
        return doc + draw(st.sampled_from([b" x", b"{}", b"\x00", b",", b"  "]))
    if how == "utf16":
        return doc.decode("latin-1").encode("utf-16")
    return doc


documents = st.one_of(st.binary(max_size=256), _values, _deep, _mutated(), st.just(b""))


# ---- what every answer must be ----------------------------------------------------------------------------

def _answer(actions: list[Any]) -> Reply | Immediate:
    answers = [a for a in actions if isinstance(a, Reply | Immediate)]
    assert len(answers) == 1, actions
    answer = answers[0]
    # The adapter turns it into protobuf without trouble (a bad UTF-8 or a surrogate would raise here).
    (build_reply(answer) if isinstance(answer, Reply) else build_immediate(answer)).SerializeToString()
    return answer


def _written_json(body: bytes) -> Any:
    """A body we wrote must be JSON a strict reader takes: UTF-8 (or ASCII escapes), no NaN, no BOM."""
    return json.loads(body.decode("utf-8"), parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


def _no_lone_surrogate(body: bytes) -> Any:
    doc = _written_json(body)
    assert not jsonbody.has_lone_surrogate(doc), body
    return doc


def _keys_anywhere(doc: Any) -> set[str]:
    out: set[str] = set()
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            out.update(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


# ---- the targets -----------------------------------------------------------------------------------------

@FUZZ
@given(body=documents, route=st.sampled_from(REQUEST_ROUTES), chunked=st.booleans(), cut=st.booleans(),
       request_id=st.binary(max_size=6))
def test_request_body_path_answers_200_400_or_413(body: bytes, route: str, chunked: bool, cut: bool,
                                                  request_id: bytes) -> None:
    session = Session(PLANS[route])
    headers = {":method": "POST", ":path": "/api/v1/x", "content-type": "application/json",
               "x-request-id": request_id.decode("utf-8", "surrogateescape")}  # as service.headers_of reads it
    if not chunked:
        headers["content-length"] = str(len(body))
    # A declared empty body ends the stream with the headers; a chunked one always has a body message.
    first = _answer(session.handle(RequestHeaders(headers, end_of_stream=not chunked and not body), 0.0))
    if isinstance(first, Immediate):
        assert first.status in (400, 413)
        _no_lone_surrogate(first.body)
        return
    if session.state != "request_body" or (not chunked and not body):
        return
    answer = _answer(session.handle(RequestBody(body, end_of_stream=not (chunked and cut)), 0.0))
    if isinstance(answer, Immediate):
        assert answer.status in (400, 413), answer
        assert _no_lone_surrogate(answer.body)["error"] in ("invalid_json", "bad_request", "payload_too_large")
        return
    assert answer.phase == "request_body"  # 200 path: on to the upstream, as sent or as we wrote it
    if answer.body is not None:
        doc = _no_lone_surrogate(answer.body)  # a request body we write is I-JSON: no lone surrogate
        assert isinstance(doc, dict)  # mapped fields are only ever written into an object
        assert answer.set_headers == (("content-length", str(len(answer.body)), False),)


@FUZZ
@given(body=documents, route=st.sampled_from(["users", "public", DEFAULT_ROUTE]), chunked=st.booleans(),
       cut=st.booleans())
def test_response_body_path_passes_filters_or_answers_502(body: bytes, route: str, chunked: bool,
                                                          cut: bool) -> None:
    session = Session(PLANS[route])
    path = "/api/v1/public/catalog/x" if route == "public" else "/api/v1/users/x"
    actions = session.handle(RequestHeaders({":method": "GET", ":path": path}, end_of_stream=True), 0.0)
    if session.state == "cache_lookup":
        actions = session.handle(CacheResult(None), 0.0)
    _answer(actions)
    headers = {":status": "200", "content-type": "application/json"}
    if not chunked:
        headers["content-length"] = str(len(body))
    _answer(session.handle(ResponseHeaders(headers, end_of_stream=not chunked and not body), 0.0))
    if session.state != "response_body":
        return
    complete = not (chunked and cut)
    actions = session.handle(ResponseBody(body, end_of_stream=complete), 0.0)
    answer = _answer(actions)
    if isinstance(answer, Immediate):
        assert answer.status == 502 and json.loads(answer.body)["error"] == "bad_gateway"
        return
    if answer.body is not None:
        assert not REMOVED & _keys_anywhere(_written_json(answer.body))
    elif route == "users" and body and complete and len(body) <= PLANS[route].max_body_bytes:
        # Passed as the upstream sent it: only ever an empty body or one too large to read (counted).
        raise AssertionError(f"a readable-size response passed unfiltered: {actions}")
    elif route == "users" and body:
        assert Note("oversize_response_body") in actions


@settings(max_examples=300, deadline=None)
@given(body=documents, strict=st.booleans())
def test_parse_raises_only_badjson_and_what_it_reads_dumps(body: bytes, strict: bool) -> None:
    try:
        doc = jsonbody.parse(body, max_depth=64, strict=strict)
    except jsonbody.BadJson as exc:
        assert exc.reason
        return
    written = jsonbody.dump(doc)
    assert jsonbody.parse(written, max_depth=64, strict=strict) == doc  # and reads back the same
    if strict:
        written.decode("utf-8")
