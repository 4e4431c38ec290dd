"""Envoy's access log through the real stack: one JSON line per request, in the design's schema, every field."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from outrider.process import free_port
from outrider.supervisor import envoy_binary
from tests.conftest import start_stack
from tests.harness import Stack, example_config_dict

SCHEMA = {"timestamp", "level", "request_id", "method", "path", "status", "duration_ms", "client_ip", "user_id",
          "user_agent", "bytes_sent", "upstream_service", "upstream_duration_ms", "cache_hit"}
CACHED = "/api/v1/public/catalog/lamp"         # examples/gateway.yaml caches /api/v1/public/catalog/**
LIMITED = "/api/v1/search"                     # limited to 1 a minute below
DOWN = "/api/v1/down/x"                        # an upstream nothing listens on
# One trusted proxy in front: the client is the address that proxy saw, not what the client wrote before it.
XFF = {"x-forwarded-for": "198.51.100.66, 203.0.113.7"}
CLIENT = "203.0.113.7"


def _envoy_version() -> tuple[int, ...]:
    out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    return tuple(int(n) for n in re.search(r"/(\d+)\.(\d+)\.(\d+)/", out).groups())  # type: ignore[union-attr]


# omit_empty_values drops absent values from a JSON format from Envoy 1.40 on; 1.39 writes them as null.
ABSENT = (None,) if _envoy_version() < (1, 40) else ()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = example_config_dict()
    data.setdefault("edge", {})["xff_num_trusted_hops"] = 1
    data["rate_limits"]["endpoints"] = [{"path": LIMITED, "limit": {"requests_per_unit": 1, "unit": "minute"}}]
    data["upstreams"].append({"name": "down", "endpoints": [{"address": "127.0.0.1", "port": free_port()}]})
    data["routes"].insert(1, {"name": "down", "match": {"prefix": "/api/v1/down/"}, "upstream": "down",
                              "public": True})
    data["routes"].insert(1, {"name": "old", "match": {"prefix": "/api/v1/old/"}, "upstream": "demo",
                              "public": True, "rewrite": {"prefix": "/api/v1/public/"}})
    # Envoy in a zone far from UTC: a timestamp in local time would be 5.5 hours off (checked()).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "Asia/Kolkata")
        running = start_stack(tmp_path_factory.mktemp("access-log"), data)
    yield running
    running.stop()


def rid() -> str:
    return f"alog-{uuid.uuid4()}"


def raw_line(stack: Stack, request_id: str, timeout_s: float = 8.0) -> str:
    """The one access log line of a request (Envoy flushes its log every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [line for line in (stack.workdir / "envoy.log").read_text().splitlines()
                 if line.startswith("{") and f'"request_id":"{request_id}"' in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(lines) == 1, f"expected one access log line for {request_id}, got {lines}"
    return lines[0]


def checked(raw: str, **expected: Any) -> dict[str, Any]:
    """The line parsed, its common fields checked, and `expected` compared field by field (None: absent)."""
    line: dict[str, Any] = json.loads(raw)
    assert set(line) <= SCHEMA, f"fields outside the schema: {set(line) - SCHEMA}"
    stamp = datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert len(line["timestamp"]) == len("2026-01-01T00:00:00.000Z")  # RFC 3339, milliseconds
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 30  # UTC, not Envoy's local time
    for key in ("status", "duration_ms", "bytes_sent"):
        assert type(line[key]) is int and line[key] >= 0, key
    if line.get("upstream_duration_ms") is not None:
        assert type(line["upstream_duration_ms"]) is int and line["upstream_duration_ms"] <= line["duration_ms"]
    assert type(line["cache_hit"]) is bool
    assert line["level"] == ("error" if line["status"] >= 500 else "warn" if line["status"] >= 400 else "info")
    for key, value in expected.items():
        if value is None:
            assert key not in line or line[key] in ABSENT, f"{key} should be absent: {line}"
        else:
            assert line.get(key) == value, f"{key}: {line}"
    present = {k for k, v in expected.items() if v is not None} | {"timestamp", "level", "duration_ms", "bytes_sent"}
    assert present <= set(line)
    return line


def test_cached_request_lines_say_miss_then_hit(stack: Stack) -> None:
    first, second = rid(), rid()
    query = "?api_key=s3cret-query-value&page=2"
    miss = stack.get(CACHED + query, headers={"x-request-id": first, "user-agent": "alog-test/1", **XFF})
    hit = stack.get(CACHED + query, headers={"x-request-id": second, "user-agent": "alog-test/1", **XFF})
    assert (miss.status_code, hit.status_code) == (200, 200)
    assert hit.headers["x-cache-status"] == "HIT"
    common = {"method": "GET", "path": CACHED, "status": 200, "level": "info", "client_ip": CLIENT,
              "user_agent": "alog-test/1", "upstream_service": "demo", "user_id": None}
    raw_miss, raw_hit = raw_line(stack, first), raw_line(stack, second)
    line = checked(raw_miss, request_id=first, cache_hit=False, bytes_sent=len(miss.content), **common)
    assert "upstream_duration_ms" in line
    # The hit never went upstream: no upstream time, but the route's upstream is still named.
    checked(raw_hit, request_id=second, cache_hit=True, bytes_sent=len(hit.content), upstream_duration_ms=None,
            **common)
    for raw in (raw_miss, raw_hit):
        assert "s3cret" not in raw and "page=2" not in raw


def test_authenticated_request_line_has_the_user_and_no_secret(stack: Stack) -> None:
    request_id, token = rid(), stack.token("bob", ("user",), "premium")
    response = stack.get("/api/v1/users/profile", headers={
        "x-request-id": request_id, "authorization": f"Bearer {token}", "cookie": "session=c00kie-secret",
        "user-agent": "alog-auth/2", **XFF})
    assert response.status_code == 200
    raw = raw_line(stack, request_id)
    checked(raw, request_id=request_id, method="GET", path="/api/v1/users/profile", status=200, level="info",
            client_ip=CLIENT, user_id="bob", user_agent="alog-auth/2", upstream_service="demo",
            bytes_sent=len(response.content), cache_hit=False)
    assert "upstream_duration_ms" in json.loads(raw)
    for secret in (token, token.split(".")[1], "Bearer", "c00kie-secret"):
        assert secret not in raw
    # One grep follows the request through the services' own JSON logs too (ext_authz's decision line).
    Stack.wait_until(lambda: request_id in (stack.workdir / "ext_authz.log").read_text(), what="ext_authz line")
    decisions = [json.loads(line) for line in (stack.workdir / "ext_authz.log").read_text().splitlines()
                 if request_id in line]
    assert [(d["request_id"], d["user_id"]) for d in decisions] == [(request_id, "bob")]


def test_rate_limited_request_line_is_a_warning(stack: Stack) -> None:
    first, second = rid(), rid()
    assert stack.get(LIMITED, headers={"x-request-id": first}).status_code == 200
    limited = stack.get(LIMITED + "?q=secret-search", headers={"x-request-id": second, "user-agent": "alog-rl/3"})
    assert limited.status_code == 429
    raw = raw_line(stack, second)
    checked(raw, request_id=second, method="GET", path=LIMITED, status=429, level="warn", client_ip="127.0.0.1",
            user_agent="alog-rl/3", upstream_service="demo", upstream_duration_ms=None,
            user_id=None, cache_hit=False, bytes_sent=len(limited.content))
    assert "secret-search" not in raw


def test_upstream_failure_line_is_an_error(stack: Stack) -> None:
    request_id = rid()
    response = stack.request("POST", DOWN, headers={"x-request-id": request_id}, json={})
    assert response.status_code == 503
    checked(raw_line(stack, request_id), request_id=request_id, method="POST", path=DOWN, status=503,
            level="error", upstream_service="down", user_id=None, cache_hit=False)


def test_logged_path_is_the_one_the_client_sent(stack: Stack) -> None:
    rewritten = rid()
    response = stack.get("/api/v1/old/thing?x=1", headers={"x-request-id": rewritten})
    assert response.json()["path"] == "/api/v1/public/thing"  # what the upstream saw
    checked(raw_line(stack, rewritten), request_id=rewritten, path="/api/v1/old/thing", status=200)
    request_id = rid()
    response = stack.get("/no/such/route", headers={"x-request-id": request_id,
                                                    "x-envoy-original-path": "/forged/path"})
    assert response.status_code == 404
    checked(raw_line(stack, request_id), request_id=request_id, path="/no/such/route", status=404, level="warn",
            upstream_service=None, upstream_duration_ms=None)

