"""ext_proc behind a real Envoy and the demo upstream: the seed's transformations, validation, hostile bodies."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import Stack

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def bearer(stack: Stack, sub: str = "epuser") -> dict[str, str]:
    return {"authorization": f"Bearer {stack.token(sub, ('user',), 'premium')}"}


def metric(stack: Stack, name: str) -> float:
    port = stack.data["services"]["ext_proc"]["metrics_port"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def test_request_header_and_query_transforms_reach_upstream(ep_stack: Stack) -> None:
    response = ep_stack.get("/api/v1/public/x?a=1&version=v0",
                            headers={"x-internal-token": "secret", "x-forwarded-for": "6.6.6.6"})
    assert response.status_code == 200
    seen = response.json()
    headers = seen["headers"]
    assert headers["x-gateway-version"] == "1.0"
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-request-id"])
    assert headers["x-forwarded-for"] == "127.0.0.1"  # the client's real address, not what it claimed
    assert "x-internal-token" not in headers
    assert seen["query"] == {"a": "1", "version": "v1"}  # set, replacing what the client sent
    assert re.fullmatch(r"\d+ms", response.headers["x-response-time"])


def test_client_ip_in_ext_proc_is_envoys_downstream_address(ep_stack: Stack) -> None:
    # A client-written X-Forwarded-For must not matter; and for a loopback peer Envoy appends its own
    # local address to X-Forwarded-For, not the peer's: only Envoy's downstream address is the client.
    response = ep_stack.request("POST", "/api/v1/lab/client-ip/x", json={"a": 1},
                                headers={"x-forwarded-for": "6.6.6.6"})
    assert response.status_code == 200, response.text
    seen = response.json()
    native = seen["headers"]["x-native-client-ip"]  # %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%
    assert native == "127.0.0.1"
    assert seen["json"]["client_ip"] == native  # ${client_ip} rendered by ext_proc for the same request
    assert seen["json"]["a"] == 1


def test_authorization_renamed_after_authorization(ep_stack: Stack) -> None:
    auth = bearer(ep_stack)
    response = ep_stack.get("/api/v1/users/profile", headers=auth)
    assert response.status_code == 200, response.text
    headers = response.json()["headers"]
    assert headers["x-auth-token"] == auth["authorization"]
    assert "authorization" not in headers
    assert headers["x-user-id"] == "epuser"  # ext_authz saw the token and set identity


def test_json_body_mapping_with_jsonpath_and_template(ep_stack: Stack) -> None:
    response = ep_stack.request("POST", "/api/v1/messages/1", headers=bearer(ep_stack),
                                json={"request": {"userId": "u-42"}, "text": "hi"})
    assert response.status_code == 200, response.text
    seen = response.json()
    body = seen["json"]
    assert body["user_id"] == "u-42"
    assert ISO.match(body["timestamp"])
    assert body["request"] == {"userId": "u-42"} and body["text"] == "hi"
    # content-length follows the new body (the upstream read exactly that many bytes).
    assert int(seen["headers"]["content-length"]) == len(json.dumps(body, separators=(",", ":")))


def test_non_json_body_passes_untouched(ep_stack: Stack) -> None:
    response = ep_stack.request("POST", "/api/v1/messages/1", headers=bearer(ep_stack),
                                data={"request": "x"})
    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["body"] == "request=x"
    assert seen["headers"]["content-length"] == "9"


def test_response_removes_nested_fields_and_adds_fields(ep_stack: Stack) -> None:
    users = {"users": [{"name": "ann", "password": "p1", "profile": {"secret_key": "k", "internal_id": 7}},
                       {"name": "bob", "password": "p2"}], "password": "top"}
    response = ep_stack.request("POST", "/api/v1/users/list", headers=bearer(ep_stack), json=users)
    assert response.status_code == 200, response.text
    assert "password" not in response.text and "secret_key" not in response.text
    doc = response.json()
    assert doc["json"] == {"users": [{"name": "ann", "profile": {}}, {"name": "bob"}]}
    assert doc["api_version"] == "v1"
    assert ISO.match(doc["timestamp"])
    # Response bodies are BUFFERED_PARTIAL (ext_proc/envoy.py), for which Envoy drops content-length: the
    # rewritten body goes out chunked, never with the upstream's (now wrong) length.
    assert "content-length" not in response.headers and response.headers["transfer-encoding"] == "chunked"
    assert re.fullmatch(r"\d+ms", response.headers["x-response-time"])


def test_header_only_route_sends_one_message(ep_stack: Stack) -> None:
    before = metric(ep_stack, "ext_proc_message_duration_seconds_count")
    response = ep_stack.request("POST", "/api/v1/lab/headers/x", json={"big": "x" * 1000})
    assert response.status_code == 200
    assert response.json()["query"] == {"lab": "1"}  # a route's map replaces the global one
    # Request headers only: no body, no response phase crossed into Python.
    assert metric(ep_stack, "ext_proc_message_duration_seconds_count") - before == 1


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "error"), [
    ("GET", "/api/v1/public/" + "a" * 4100, {}, 414, "uri_too_long"),
    ("GET", "/api/v1/public/x", {"headers": {"x-big": "b" * 33_000}}, 431, "request_header_fields_too_large"),
    ("POST", "/api/v1/lab/strict/x", {"json": {"a": "b" * 2000}}, 413, "payload_too_large"),
    ("POST", "/api/v1/public/x", {"content": b"hi", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ("POST", "/api/v1/public/x", {"content": b"hi"}, 415, "unsupported_media_type"),
    ("GET", "/api/v1/public/files?name=../../etc/passwd", {}, 400, "bad_request"),
    ("GET", "/api/v1/public/x?q=1%27%20OR%20%271%27%3D%271", {}, 400, "bad_request"),
    ("GET", "/api/v1/public/x?id=1%20UNION%20SELECT%20password%20FROM%20users", {}, 400, "bad_request"),
    ("POST", "/api/v1/public/x", {"json": {"bio": "<script>alert(1)</script>"}}, 400, "bad_request"),
    ("POST", "/api/v1/public/x", {"json": {"deep": [{"q": "a'; DROP TABLE users"}]}}, 400, "bad_request"),
])
def test_validation_statuses_with_json_bodies(ep_stack: Stack, method: str, path: str, kwargs: dict,  # type: ignore[type-arg]
                                              status: int, error: str) -> None:
    response = ep_stack.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == error
    assert set(body) == {"error", "request_id"}  # the rule is never echoed


def test_rule_is_named_in_the_log(ep_stack: Stack) -> None:
    response = ep_stack.get("/api/v1/public/x?q=%3Cscript%3Ex%3C/script%3E")
    assert response.status_code == 400
    request_id = response.json()["request_id"]
    log = ep_stack.workdir / "ext_proc.log"

    def logged() -> bool:
        return any(request_id in line and '"rule":"xss_script_tag"' in line
                   for line in log.read_text().splitlines())
    ep_stack.wait_until(logged, what="the rejection in the ext_proc log")


def test_checks_switched_off_per_route(ep_stack: Stack) -> None:
    sqli = "1' OR '1'='1"
    assert ep_stack.get("/api/v1/public/x", params={"q": sqli}).status_code == 400
    response = ep_stack.request("POST", "/api/v1/lab/lenient/x", params={"q": sqli}, json={"q": "<script>"})
    assert response.status_code == 200, response.text
    assert response.json()["json"] == {"q": "<script>", "seen": "yes"}


def test_oversize_json_body_passes_untouched_or_is_refused(ep_stack: Stack) -> None:
    big = {"a": "b" * 600}
    passed = ep_stack.request("POST", "/api/v1/lab/lenient/x", json=big)
    assert passed.status_code == 200
    assert passed.json()["json"] == big  # untouched: no `seen` field
    refused = ep_stack.request("POST", "/api/v1/lab/strict/x", json={"a": "b" * 600})
    assert refused.status_code == 413
    small = ep_stack.request("POST", "/api/v1/lab/strict/x", json={"a": "b"})
    assert small.json()["json"] == {"a": "b", "seen": "yes"}


@pytest.mark.parametrize("body", [
    b'\xff\xfe{"a": 1}',                       # invalid UTF-8
    b"[" * 200 + b"]" * 200,                   # nested deeper than max_json_depth
    b'{"a": 1e999}',                           # a number out of range
    b'{"a": ' + b"9" * 5000 + b"}",            # an integer too long to convert
    b'{"a": 1, "a": 2}',                       # duplicate keys
    b'{"a": [1, 2',                            # cut short
    b'{"a": NaN}',                             # not JSON
], ids=["utf8", "deep", "inf", "longint", "dupkey", "truncated", "nan"])
def test_hostile_bodies_get_400_and_the_stream_lives_on(ep_stack: Stack, body: bytes) -> None:
    response = ep_stack.request("POST", "/api/v1/public/x", content=body,
                                headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    after = ep_stack.request("POST", "/api/v1/public/x", json={"ok": True})
    assert after.status_code == 200
    assert ep_stack.procs["ext_proc"].running


def test_direct_response_and_not_found_routes_skip_the_processor(ep_stack: Stack) -> None:
    assert ep_stack.get("/health/live").json() == {"status": "live"}
    assert ep_stack.get("/nope").json() == {"error": "not_found"}


def test_chunked_json_body_beyond_envoys_buffer_is_refused(ep_stack: Stack) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"a": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'
    response = ep_stack.request("POST", "/api/v1/public/x", content=chunks(),
                                headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert ep_stack.request("POST", "/api/v1/public/x", json={"ok": 1}).status_code == 200
