"""The sans-IO stream session: events in, actions out, for each kind of route and outcome."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.cache import CacheEntry
from ext_proc.events import (
    CacheResult,
    Immediate,
    InvalidateCache,
    LookupCache,
    ModeOverride,
    Note,
    Reply,
    RequestBody,
    RequestHeaders,
    ResponseBody,
    ResponseHeaders,
    StoreCache,
    Trailers,
)
from ext_proc.plan import DEFAULT_ROUTE, RoutePlan
from ext_proc.service import address_without_port, to_event
from ext_proc.session import ProtocolError, Session
from tests.ext_proc.conftest import ext_proc_config_dict, plans_from

T0 = 1_800_000_000.0
JSON = {"content-type": "application/json"}


def req(path: str, method: str = "GET", body: bool = False, **headers: str) -> RequestHeaders:
    h = {":method": method, ":path": path, "x-forwarded-for": "10.1.1.1, 127.0.0.9", "x-request-id": "rid",
         **{k.replace("_", "-"): v for k, v in headers.items()}}
    # Envoy's downstream address comes with the event; the X-Forwarded-For a client sent is not it.
    return RequestHeaders(h, end_of_stream=not body, client_ip="10.9.9.9")


def resp(status: int = 200, body: bool = True, **headers: str) -> ResponseHeaders:
    return ResponseHeaders({":status": str(status), **JSON, **{k.replace("_", "-"): v for k, v in headers.items()}},
                           end_of_stream=not body)


def only(actions: list[Any], kind: type) -> Any:
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def test_header_only_route(example_plans: dict[str, RoutePlan]) -> None:
    session = Session(example_plans["lab-headers"])
    actions = session.handle(req("/api/v1/lab/headers/x?a=1"), T0)
    reply = only(actions, Reply)
    assert reply.phase == "request_headers"
    assert reply.set_headers == ((":path", "/api/v1/lab/headers/x?a=1&lab=1", False),)
    assert reply.mode is None and len(actions) == 1  # the route asked for request headers only


def test_json_request_body_mapped_with_content_length(example_plans: dict[str, RoutePlan]) -> None:
    session = Session(example_plans["messages"])
    reply = only(session.handle(req("/api/v1/messages/1", "POST", body=True, content_length="30", **JSON), T0),
                 Reply)
    assert reply.mode is None  # exactly the route's phases (request headers, BUFFERED body): length known
    body = json.dumps({"request": {"userId": "u7"}}).encode()
    reply = only(session.handle(RequestBody(body, True), T0), Reply)
    assert reply.body is not None
    doc = json.loads(reply.body)
    assert doc == {"request": {"userId": "u7"}, "user_id": "u7", "timestamp": "2027-01-15T08:00:00.000Z"}
    assert reply.set_headers == (("content-length", str(len(reply.body)), False),)


def test_non_json_body_skips_the_body_phase(example_plans: dict[str, RoutePlan]) -> None:
    session = Session(example_plans["messages"])
    reply = only(session.handle(req("/api/v1/messages/1", "POST", body=True,
                                    content_type="multipart/form-data; boundary=b"), T0), Reply)
    # The response body phase stays: the design's response transform reads every route's JSON responses
    # (its content type comes with the body: no response headers message on this route).
    assert reply.mode == ModeOverride(request_body=False, response_headers=False, response_body=True)


def test_attack_in_json_body_is_refused_naming_the_rule(example_plans: dict[str, RoutePlan]) -> None:
    session = Session(example_plans["public"])
    session.handle(req("/api/v1/public/x", "POST", body=True, **JSON), T0)
    actions = session.handle(RequestBody(b'{"a": {"b": ["<script>x</script>"]}}', True), T0)
    immediate = only(actions, Immediate)
    assert immediate.status == 400 and json.loads(immediate.body) == {"error": "bad_request", "request_id": "rid"}
    assert only(actions, Note) == Note("rejected", "xss_script_tag", log=True)
    assert session.state == "done"


@pytest.mark.parametrize(("route", "length", "status"), [("lab-strict", "600", 413), ("lab-lenient", "600", None)])
def test_declared_oversize_body(example_plans: dict[str, RoutePlan], route: str, length: str,
                                status: int | None) -> None:
    session = Session(example_plans[route])
    actions = session.handle(req("/x", "POST", body=True, content_length=length, **JSON), T0)
    if status is None:
        assert only(actions, Note).kind == "oversize_request_body"
        assert only(actions, Reply).mode is not None and not only(actions, Reply).mode.request_body
    else:
        assert only(actions, Immediate).status == status


def test_body_of_unknown_length_is_asked_for_partial(example_plans: dict[str, RoutePlan]) -> None:
    # Chunked (no content-length): BUFFERED_PARTIAL, so that a body above Envoy's limit reaches us cut
    # short instead of stalling the stream (ext_proc/envoy.py); the rest of the route's phases unchanged.
    session = Session(example_plans["messages"])
    reply = only(session.handle(req("/api/v1/messages/1", "POST", body=True, **JSON), T0), Reply)
    assert reply.mode == ModeOverride(request_body=True, response_headers=False, response_body=True,
                                      request_partial=True)


@pytest.mark.parametrize("route", ["lab-lenient", "lab-strict", "messages"])
def test_body_cut_at_envoys_limit_is_refused_on_every_route(example_plans: dict[str, RoutePlan],
                                                            route: str) -> None:
    # Even where oversize bodies pass (lab-lenient): Envoy refuses the same body itself when it is all
    # there before our answer to the headers; the outcome must not depend on timing.
    session = Session(example_plans[route])
    session.handle(req("/x", "POST", body=True, **JSON), T0)
    actions = session.handle(RequestBody(b'{"a": "', False), T0)  # Envoy's buffer was full
    assert only(actions, Immediate).status == 413
    assert only(actions, Note) == Note("rejected", "body_over_buffer_limit", log=True)


def test_complete_body_above_max_body_bytes_passes_or_is_refused(example_plans: dict[str, RoutePlan]) -> None:
    body = b'{"a": "' + b"x" * 600 + b'"}'
    lenient = Session(example_plans["lab-lenient"])
    lenient.handle(req("/x", "POST", body=True, **JSON), T0)
    actions = lenient.handle(RequestBody(body, True), T0)
    assert only(actions, Reply).body is None and only(actions, Note).kind == "oversize_request_body"
    strict = Session(example_plans["lab-strict"])
    strict.handle(req("/x", "POST", body=True, **JSON), T0)
    assert only(strict.handle(RequestBody(body, True), T0), Immediate).status == 413


def test_response_json_transform_and_response_time(example_plans: dict[str, RoutePlan]) -> None:
    session = Session(example_plans["users"])
    reply = only(session.handle(req("/api/v1/users/list", "POST", body=True, content_length="2", **JSON), T0),
                 Reply)
    assert reply.mode is None  # every phase of the route is needed
    only(session.handle(RequestBody(b"{}", True), T0), Reply)
    only(session.handle(resp(content_length="50"), T0 + 0.025), Reply)
    body = b'{"items": [{"id": 1, "password": "x", "internal_id": 2}], "secret_key": 3}'
    reply = only(session.handle(ResponseBody(body, True), T0 + 0.03), Reply)
    assert reply.body is not None
    assert json.loads(reply.body) == {"items": [{"id": 1}], "api_version": "v1",
                                      "timestamp": "2027-01-15T08:00:00.030Z"}
    assert reply.set_headers == (("content-length", str(len(reply.body)), False),)


def test_response_that_is_not_json_is_not_buffered(example_plans: dict[str, RoutePlan]) -> None:
    session = Session(example_plans["users"])
    session.handle(req("/api/v1/users/u1/avatar"), T0)  # no cache rule covers it
    reply = only(session.handle(ResponseHeaders({":status": "200", "content-type": "image/png"}, False), T0),
                 Reply)
    assert reply.mode == ModeOverride(request_body=False, response_headers=True, response_body=False)


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"password": "x", "v": NaN}', "non_standard_constant"),
    (b'{"password": "x", "v": [' + b"[" * 300 + b"]" * 300 + b"]}", "too_deep"),
    (b'{"password": "\xff"}', "invalid_utf8"),
    (b'{"password": "x"', "invalid_json"),
])
def test_unreadable_response_json_is_a_502_never_passed_unfiltered(example_plans: dict[str, RoutePlan],
                                                                   body: bytes, reason: str) -> None:
    session = Session(example_plans["users"])  # removes `password` from responses
    session.handle(req("/api/v1/users/u1/items"), T0)  # not cached: straight to the response
    session.handle(resp(), T0)
    actions = session.handle(ResponseBody(body, True), T0)
    immediate = only(actions, Immediate)
    assert immediate.status == 502 and json.loads(immediate.body)["error"] == "bad_gateway"
    assert b"password" not in immediate.body
    assert only(actions, Note) == Note("response_json_invalid", reason, log=True)


@pytest.mark.parametrize(("body", "doc"), [
    (b'{"password": "x", "password": "y", "n": 1}', {"n": 1}),   # the last wins, as JSON.parse reads it
    (b'\xef\xbb\xbf{"password": "x", "n": 1}', {"n": 1}),       # a BOM is ignored (RFC 8259 8.1)
    (b'{"name": "\\ud800", "password": "x"}', {"name": "\ud800"}),   # kept, written back escaped
    (b'[{"password": "x", "n": 1}]', [{"n": 1}]),                # removals reach into a top-level array
])
def test_response_json_read_leniently_is_still_filtered(example_plans: dict[str, RoutePlan], body: bytes,
                                                        doc: Any) -> None:
    session = Session(example_plans["users"])
    session.handle(req("/api/v1/users/u1/items"), T0)  # not cached: straight to the response
    session.handle(resp(), T0)
    reply = only(session.handle(ResponseBody(body, True), T0), Reply)
    assert reply.body is not None
    out = json.loads(reply.body)
    if isinstance(out, dict):  # the route's add_json_fields apply to objects only
        assert out.pop("api_version") == "v1" and out.pop("timestamp")
    assert out == doc
    reply.body.decode("ascii" if b"\\u" in reply.body else "utf-8")
    assert reply.set_headers == (("content-length", str(len(reply.body)), False),)


@pytest.mark.parametrize("route", ["users", "messages", "public"])
def test_empty_body_passes_however_framed(example_plans: dict[str, RoutePlan], route: str) -> None:
    # content-length: 0 → Envoy sends no body message at all (end_of_stream on the headers)...
    framed = Session(example_plans[route])
    reply = only(framed.handle(req("/x", "POST", body=False, content_length="0", **JSON), T0), Reply)
    assert reply.phase == "request_headers"
    # ...and a chunked empty body arrives as one empty message with end_of_stream: the same outcome.
    chunked = Session(example_plans[route])
    chunked.handle(req("/x", "POST", body=True, **JSON), T0)
    actions = chunked.handle(RequestBody(b"", True), T0)
    assert only(actions, Reply) == Reply("request_body") and only(actions, Note).kind == "empty_body"


def test_cache_miss_store_then_hit(example_plans: dict[str, RoutePlan]) -> None:
    plan = example_plans["public"]
    session = Session(plan)
    lookup = only(session.handle(req("/api/v1/public/catalog/a", accept_language="en"), T0), LookupCache)
    reply = only(session.handle(CacheResult(None), T0), Reply)
    assert reply.mode == ModeOverride(request_body=False, response_headers=True, response_body=True)
    assert only(session.handle(resp(x_response_time="3ms", etag='"e"'), T0), Reply).set_headers == ()
    actions = session.handle(ResponseBody(b'{"n": 1}', True), T0 + 1)
    reply = only(actions, Reply)
    assert reply.set_headers[-1] == ("x-cache-status", "MISS", False)
    store = only(actions, StoreCache)
    assert store.key == lookup.key and store.ttl_s == 3600 and store.path == "/api/v1/public/catalog/a"
    stored_body = reply.body  # what is stored is the transformed body (no field to remove on a hit)
    assert stored_body is not None and json.loads(stored_body)["api_version"] == "v1"

    hit = Session(plan)
    assert only(hit.handle(req("/api/v1/public/catalog/a", accept_language="en"), T0 + 5), LookupCache) == lookup
    immediate = only(hit.handle(CacheResult(store.value), T0 + 5), Immediate)
    assert immediate.status == 200 and immediate.body == stored_body
    headers = dict(immediate.headers)
    assert headers["x-cache-status"] == "HIT" and headers["age"] == "4" and headers["etag"] == '"e"'
    assert headers["x-response-time"] == "0ms" and "content-length" not in headers
    assert hit.state == "done"


def test_uncacheable_response_says_bypass(example_plans: dict[str, RoutePlan]) -> None:
    session = Session(example_plans["public"])
    session.handle(req("/api/v1/public/catalog/a"), T0)
    session.handle(CacheResult(None), T0)
    reply = only(session.handle(resp(cache_control="no-store", content_type="text/plain"), T0), Reply)
    assert ("x-cache-status", "BYPASS", False) in reply.set_headers
    assert reply.mode == ModeOverride(request_body=False, response_headers=True, response_body=False)


def test_corrupt_cache_entry_is_a_miss(example_plans: dict[str, RoutePlan]) -> None:
    session = Session(example_plans["public"])
    session.handle(req("/api/v1/public/catalog/a"), T0)
    assert only(session.handle(CacheResult(b"junk"), T0), Note).kind == "cache_miss"


@pytest.mark.parametrize(("status", "invalidates"), [(200, True), (204, True), (409, False), (503, False)])
def test_unsafe_method_invalidates_on_success(example_plans: dict[str, RoutePlan], status: int,
                                              invalidates: bool) -> None:
    session = Session(example_plans["public"])
    reply = only(session.handle(req("/api/v1/public/catalog/a?x=1", "PUT", body=True, **JSON), T0), Reply)
    assert reply.mode is not None and reply.mode.response_headers
    session.handle(RequestBody(b"{}", True), T0)
    actions = session.handle(resp(status, body=False), T0)
    assert bool([a for a in actions if isinstance(a, InvalidateCache)]) == invalidates


def test_default_plan_does_header_edits_itself() -> None:
    plans = plans_from(ext_proc_config_dict())
    session = Session(plans[DEFAULT_ROUTE])
    reply = only(session.handle(req("/anything", x_internal_token="t", authorization="Bearer a"), T0), Reply)
    names = {name for name, _, _ in reply.set_headers}
    assert {"x-gateway-version", "x-forwarded-for", "x-auth-token", ":path"} <= names
    assert dict((n, v) for n, v, _ in reply.set_headers)["x-forwarded-for"] == "10.9.9.9"
    assert reply.remove_headers == ("x-internal-token",)


def test_protocol_errors_and_trailers(example_plans: dict[str, RoutePlan]) -> None:
    session = Session(example_plans["public"])
    with pytest.raises(ProtocolError):
        session.handle(RequestBody(b"", True), T0)
    assert session.handle(Trailers("request_trailers"), T0) == [Reply("request_trailers")]
    entry = CacheEntry(200, (), b"", T0)
    with pytest.raises(ProtocolError):
        session.handle(CacheResult(entry.encode()), T0)


def test_reply_made_before_ext_proc_is_untouched(example_plans: dict[str, RoutePlan]) -> None:
    session = Session(example_plans["users"])  # ext_authz answered 401: no request message reached us
    actions = session.handle(resp(401, content_length="40"), T0)
    reply = only(actions, Reply)
    assert reply.set_headers == () and reply.mode is not None and not reply.mode.response_body
    assert only(actions, Note).kind == "local_reply_untouched" and session.state == "done"


@pytest.mark.parametrize(("address", "ip"), [
    ("10.0.0.7:5555", "10.0.0.7"), ("[::1]:443", "::1"), ("[2001:db8::1]:80", "2001:db8::1"),
    ("/run/envoy.sock", "/run/envoy.sock"), ("", ""),
])
def test_address_without_port(address: str, ip: str) -> None:
    assert address_without_port(address) == ip


def test_client_ip_is_envoys_source_address_attribute_never_a_header() -> None:
    message = pb.ProcessingRequest()
    message.request_headers.headers.headers.add(key="x-forwarded-for", raw_value=b"6.6.6.6")
    event = to_event(message, "request_headers")
    assert isinstance(event, RequestHeaders) and event.client_ip == ""  # not asked for: unknown, not guessed
    message.attributes["envoy.filters.http.ext_proc"].fields["source.address"].string_value = "10.0.0.7:5555"
    event = to_event(message, "request_headers")
    assert isinstance(event, RequestHeaders) and event.client_ip == "10.0.0.7"


def test_request_id_that_is_not_utf8_is_never_a_lone_surrogate_in_what_we_write() -> None:
    data = ext_proc_config_dict()
    data["routes"].append({"name": "rid", "match": {"prefix": "/rid/"}, "upstream": "demo", "public": True,
                           "transformations": {"request": {"json_body": {"rid": "${request_id}"}}}})
    plan = plans_from(data)["rid"]
    # Envoy passes header bytes that are not UTF-8 (obs-text); service.headers_of keeps them as surrogates.
    raw_id = b"id-\xff".decode("utf-8", "surrogateescape")
    session = Session(plan)
    session.handle(req("/rid/x", "POST", body=True, content_length="2", x_request_id=raw_id, **JSON), T0)
    reply = only(session.handle(RequestBody(b"{}", True), T0), Reply)
    assert reply.body is not None and json.loads(reply.body.decode("utf-8"))["rid"] == "id-\ufffd"
    refused = Session(plan)
    refused.handle(req("/rid/x", "POST", body=True, content_length="2", x_request_id=raw_id, **JSON), T0)
    immediate = only(refused.handle(RequestBody(b"[]", True), T0), Immediate)  # no object: 400
    assert json.loads(immediate.body) == {"error": "invalid_json", "request_id": "id-\ufffd"}
