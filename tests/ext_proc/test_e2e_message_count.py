"""Messages per request between Envoy and ext_proc on the example's routes, counted by Envoy itself.

Issue 15 ("Skip what adds nothing"): at most two messages per request where a response is needed. A route
whose response work is JSON body edits only (the example's remove_json_fields / add_json_fields on every
route) skips the response headers message: Envoy copies the response's content-type into dynamic metadata
(header_to_metadata) and ext_proc forwards it with the body (`metadata_options.forwarding_namespaces`,
ext_proc.proto: "Describes which typed or untyped dynamic metadata namespaces to forward to the external
processing server"). Response-header attributes (`response.headers[...]`) are not evaluated when
response_header_mode is SKIP (envoyproxy/envoy#43981, checked on Envoy 1.40), hence the metadata.
Envoy's count is the ext_proc filter's `stream_msgs_sent` counter (ext_proc filter stats: "Messages sent
on the gRPC stream"), the processor's its own message histogram.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from ext_proc.envoy import HOLD_KEY, LUA_FILTER
from outrider.envoy_config import compile_http_filters, compile_route_configuration
from tests.conftest import start_stack
from tests.ext_proc.conftest import config_from, ext_proc_config_dict
from tests.harness import Stack

RELEASE = threading.Event()  # the event stream's second event waits for it


class EventStream(BaseHTTPRequestHandler):
    """An upstream that sends one server-sent event, then holds the stream open until RELEASE."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for event in (b"data: one\n\n", b"data: two\n\n"):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
            RELEASE.wait(10)
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ep_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The ext_proc lab config plus a body-only route whose upstream streams events."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), EventStream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    data: dict[str, Any] = ext_proc_config_dict()
    data["upstreams"].append({"name": "events", "endpoints": [{"address": "127.0.0.1",
                                                               "port": server.server_address[1]}]})
    data["routes"].insert(0, {"name": "lab-events", "match": {"prefix": "/api/v1/lab/events/"},
                              "upstream": "events", "public": True, "validation": {"enabled": False},
                              "transformations": {"response": {"remove_json_fields": ["password"]}}})
    running = start_stack(tmp_path_factory.mktemp("ep-count"), data)
    yield running
    running.stop()
    RELEASE.set()
    server.shutdown()


def envoy_messages(stack: Stack) -> int:
    """Messages Envoy's ext_proc filter has sent to the processor so far (every listener)."""
    stats = httpx.get(f"{stack.admin_url}/stats", params={"filter": r"\.ext_proc\.stream_msgs_sent$",
                                                          "format": "json"}, timeout=5).json()["stats"]
    return sum(int(s["value"]) for s in stats if "value" in s)


def processor_messages(stack: Stack) -> float:
    port = stack.data["services"]["ext_proc"]["metrics_port"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    name = "ext_proc_message_duration_seconds_count"
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def counted(stack: Stack, method: str, path: str, **kwargs: object) -> tuple[httpx.Response, int, float]:
    envoy, processor = envoy_messages(stack), processor_messages(stack)
    response = stack.request(method, path, **kwargs)  # type: ignore[arg-type]
    return response, envoy_messages(stack) - envoy, processor_messages(stack) - processor


def bearer(stack: Stack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.token('counter', ('user',), 'enterprise')}"}


def test_the_envoy_config_skips_the_response_headers_of_body_only_routes() -> None:
    config = config_from(ext_proc_config_dict())
    routes = {r["name"]: r for r in compile_route_configuration(config)["virtual_hosts"][0]["routes"]}
    mode = routes["messages"]["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["overrides"][
        "processing_mode"]
    assert mode["response_header_mode"] == "SKIP" and mode["response_body_mode"] == "BUFFERED_PARTIAL"
    assert routes["messages"]["metadata"]["filter_metadata"][LUA_FILTER][HOLD_KEY] == 1048576
    # A cached route keeps its headers message: X-Cache-Status is decided from the response headers.
    public = routes["public"]["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["overrides"]
    assert public["processing_mode"]["response_header_mode"] == "SEND" and "metadata" not in routes["public"]
    # Encoder filters run in reverse order: header_to_metadata sees the response before ext_proc, and the
    # Lua hold after it.
    filters = compile_http_filters(config)
    names = [f["name"] for f in filters]
    at = names.index("envoy.filters.http.ext_proc")
    assert names[at - 1] == LUA_FILTER and names[at + 1] == "envoy.filters.http.header_to_metadata"
    # The hold costs a Lua call: off unless a route turns it on.
    assert filters[at - 1]["disabled"] is True
    assert LUA_FILTER in routes["messages"]["typed_per_filter_config"]
    assert LUA_FILTER not in routes["public"]["typed_per_filter_config"]


def test_get_on_a_body_only_route_takes_two_messages(ep_stack: Stack) -> None:
    response, envoy, processor = counted(ep_stack, "GET", "/api/v1/messages/inbox?password=hunter2",
                                         headers=bearer(ep_stack))
    assert response.status_code == 200, response.text
    doc = response.json()
    # The response was transformed as before: fields removed at any depth, fields added.
    assert "password" not in doc["query"] and doc["query"]["version"] == "v1" and doc["api_version"] == "v1"
    assert response.headers["x-cache-status"] == "BYPASS" and response.headers["x-response-time"].endswith("ms")
    # Request headers (validation, renames, add_query) + response body: no response headers message.
    assert (envoy, processor) == (2, 2)


def test_post_with_a_json_body_takes_three_messages(ep_stack: Stack) -> None:
    response, envoy, processor = counted(ep_stack, "POST", "/api/v1/messages/send", headers=bearer(ep_stack),
                                         json={"to": "bob", "password": "p", "nested": [{"secret_key": "k"}]})
    assert response.status_code == 200, response.text
    assert "password" not in response.text and "secret_key" not in response.text
    assert response.json()["json"]["to"] == "bob"
    assert (envoy, processor) == (3, 3)  # request headers, request body, response body


def test_non_json_response_passes_untouched_in_two_messages(ep_stack: Stack) -> None:
    # A HEAD has no body: nothing to transform, and nothing sent after the request headers.
    response, envoy, processor = counted(ep_stack, "HEAD", "/api/v1/messages/inbox", headers=bearer(ep_stack))
    assert response.status_code == 200
    assert (envoy, processor) == (1, 1)


def test_envoys_own_reply_is_one_message_and_untouched(ep_stack: Stack) -> None:
    # ext_authz's 401: ext_proc never saw the request; its body passes as ext_authz wrote it.
    response, envoy, processor = counted(ep_stack, "GET", "/api/v1/messages/inbox")
    assert response.status_code == 401
    assert response.json()["error"] and "api_version" not in response.json()
    assert (envoy, processor) == (1, 1)


def test_cached_route_keeps_its_response_headers_message(ep_stack: Stack) -> None:
    response, envoy, _ = counted(ep_stack, "GET", "/api/v1/public/count-me-once")
    assert response.status_code == 200 and response.headers["x-cache-status"] in ("MISS", "BYPASS")
    assert envoy == 3  # request headers (lookup), response headers (X-Cache-Status), response body (store)


def test_a_request_for_events_streams_them_as_they_come(ep_stack: Stack) -> None:
    # Without its headers message a body-only route's response body would sit in Envoy's buffer
    # (BUFFERED_PARTIAL) until the processor could tell it is no JSON: the request's `accept` brings the
    # headers message back for it, and its answer (not JSON) switches the body phase off.
    RELEASE.clear()
    before = envoy_messages(ep_stack)
    with httpx.Client(base_url=ep_stack.url, timeout=5) as client, client.stream(
            "GET", "/api/v1/lab/events/live", headers={"accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        first = next(chunks)  # before the upstream sends its second event
        assert first.startswith(b"data: one")
        RELEASE.set()
        rest = b"".join(chunks)
    assert (first + rest) == b"data: one\n\ndata: two\n\n"
    assert envoy_messages(ep_stack) - before == 2  # request headers, response headers
