"""The session on a route that skips the response headers message: the body comes with its content type."""

from __future__ import annotations

import json

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.envoy import CONTENT_TYPE_KEY, NO_CONTENT_TYPE, RESPONSE_NAMESPACE
from ext_proc.events import Immediate, Note, Reply, ResponseBody
from ext_proc.plan import DEFAULT_ROUTE, RoutePlan
from ext_proc.service import to_event
from ext_proc.session import Session
from tests.ext_proc.test_session import T0, only, req

BODY = b'{"user": {"name": "ann", "password": "p"}}'


def started(plan: RoutePlan) -> Session:
    session = Session(plan)
    reply = only(session.handle(req("/api/v1/messages/inbox"), T0), Reply)
    # Never asks for the response headers back (a GET's override only drops the request body phase).
    assert reply.mode is None or not reply.mode.response_headers
    return session


def test_plans_of_our_routes_skip_the_headers_and_unknown_routes_keep_them(
        example_plans: dict[str, RoutePlan]) -> None:
    assert example_plans["messages"].phases.response_body and not example_plans["messages"].phases.response_headers
    # An Envoy config of your own (a mesh's) forwards no content type with the body.
    assert example_plans[DEFAULT_ROUTE].phases.response_headers


def test_json_body_is_transformed_without_headers(example_plans: dict[str, RoutePlan]) -> None:
    session = started(example_plans["messages"])
    actions = session.handle(ResponseBody(BODY, True, "application/json; charset=utf-8"), T0 + 0.01)
    reply = only(actions, Reply)
    assert reply.phase == "response_body" and reply.body is not None
    doc = json.loads(reply.body)
    assert doc["user"] == {"name": "ann"} and doc["api_version"] == "v1"
    # The headers went out already (and Envoy dropped content-length): no header edit is sent.
    assert reply.set_headers == () and session.state == "done"


def test_non_json_and_typeless_bodies_pass_untouched(example_plans: dict[str, RoutePlan]) -> None:
    for content_type in ("text/plain", ""):
        session = started(example_plans["messages"])
        reply = only(session.handle(ResponseBody(BODY, True, content_type), T0), Reply)
        assert reply.body is None and reply.set_headers == ()


def test_body_without_its_content_type_is_refused(example_plans: dict[str, RoutePlan]) -> None:
    # No header_to_metadata in this Envoy: never passed on untransformed.
    session = started(example_plans["messages"])
    actions = session.handle(ResponseBody(BODY, True, None), T0)
    assert only(actions, Immediate).status == 502
    assert only(actions, Note) == Note("response_content_type_unknown", log=True)


def test_envoys_own_reply_passes_untouched(example_plans: dict[str, RoutePlan]) -> None:
    session = Session(example_plans["messages"])  # the request never reached the processor (ext_authz 401)
    actions = session.handle(ResponseBody(b'{"error": "unauthorized", "password": "x"}', True, "application/json"),
                             T0)
    assert only(actions, Reply) == Reply("response_body") and session.state == "done"


def test_content_type_is_read_from_the_forwarded_metadata() -> None:
    message = pb.ProcessingRequest(response_body=pb.HttpBody(body=b"{}", end_of_stream=True))
    assert to_event(message, "response_body") == ResponseBody(b"{}", True, None)
    message.metadata_context.filter_metadata[RESPONSE_NAMESPACE].update({CONTENT_TYPE_KEY: "application/json"})
    assert to_event(message, "response_body") == ResponseBody(b"{}", True, "application/json")
    message.metadata_context.filter_metadata[RESPONSE_NAMESPACE].update({CONTENT_TYPE_KEY: NO_CONTENT_TYPE})
    assert to_event(message, "response_body") == ResponseBody(b"{}", True, "")


def test_a_request_for_a_stream_gets_its_response_headers_message(example_plans: dict[str, RoutePlan]) -> None:
    # Server-sent events: the headers message tells the processor it is no JSON, so the events are never
    # buffered behind a body phase (the pre-existing path: mode_override drops the body then).
    session = Session(example_plans["messages"])
    reply = only(session.handle(req("/api/v1/messages/live", accept="text/event-stream"), T0), Reply)
    assert reply.mode is not None and reply.mode.response_headers and reply.mode.response_body
