"""The path policy through the real Envoy (and ext_authz, over xDS as `outrider run` starts them).

The issue's examples (`/api/v1/public/..%3b/admin/x`, `%c0%ae%c0%ae`, `...//`) are 400s that never reach the
upstream; a generated sample gets from Envoy the verdict the Python model of the compiled rule gives
(tests/edge/test_path_policy.py); a route may allow `;` parameters without any other route seeing them; and
in `normalize` mode what Envoy resolves, it routes as resolved.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from hypothesis import HealthCheck, given, settings

from outrider.path_policy import violation
from tests.conftest import start_stack
from tests.edge.conftest import counter, edge_config, raw_request
from tests.edge.test_path_policy import PUBLIC, REFUSED, interpretations, variant
from tests.harness import Stack

ISSUE_EXAMPLES = ["/api/v1/public/..%3b/admin/x", "/api/v1/public/%c0%ae%c0%ae/admin/x", "/api/v1/public/...//admin/x"]
UPSTREAM_REQUESTS = "cluster.demo.upstream_rq_total"


# The generated paths without traversal in their queries (ext_proc's validation answers those, not the policy).
SAMPLE = variant().map(lambda target: target.replace("?next=/../admin", "?next=home"))


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("strict"), edge_config())
    yield running
    running.stop()


@pytest.fixture(scope="module")
def lenient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = edge_config(non_canonical_paths="normalize")
    legacy = {"name": "legacy", "match": {"prefix": "/api/v1/legacy/"}, "upstream": "demo", "public": True,
              "allow_path_parameters": True}
    data["routes"].insert(1, legacy)
    running = start_stack(tmp_path_factory.mktemp("lenient"), data)
    yield running
    running.stop()


def port(stack: Stack) -> int:
    return int(stack.data["listeners"][0]["port"])


def route_for(stack: Stack, path: str) -> dict[str, Any] | None:
    """The config route Envoy's table picks for an (already normalised) path: first match in order."""
    for route in stack.data["routes"]:
        match = route["match"]
        if ("prefix" in match and path.startswith(match["prefix"])) or match.get("path") == path:
            return route  # type: ignore[no-any-return]
    return None


def assert_refused(stack: Stack, target: str) -> None:
    response = raw_request(port(stack), target, {"x-request-id": "req-path-1"})
    assert response.status == 400, (target, response)
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "invalid_path", "request_id": "req-path-1"}


@pytest.mark.parametrize("target", ISSUE_EXAMPLES)
def test_issue_examples_are_400_and_never_reach_the_upstream(strict: Stack, target: str) -> None:
    before = counter(strict, UPSTREAM_REQUESTS)
    assert_refused(strict, target)
    assert raw_request(port(strict), "/api/v1/public/fine").status == 200  # the counter does count
    assert counter(strict, UPSTREAM_REQUESTS) == before + 1


@pytest.mark.parametrize("target", REFUSED)
def test_every_known_confusion_is_refused(strict: Stack, target: str) -> None:
    if "#" in target:  # Envoy's codec refuses fragments itself (400, no body)
        assert raw_request(port(strict), target).status == 400
        return
    assert_refused(strict, target)


def test_protected_routes_are_covered_too_and_before_authorization(strict: Stack) -> None:
    # No token, yet a 400 and not a 401: the policy routes come before the route that would check one.
    assert_refused(strict, "/api/v1/users/..;/admin/x")
    assert_refused(strict, "/api/v1/admin/%2e%2e/public/x")
    assert raw_request(port(strict), "/api/v1/users/profile").status == 401


def test_canonical_paths_and_queries_pass(strict: Stack) -> None:
    # The query is not the path: `;` and encoded slashes there are the query's business (ext_proc validates it).
    response = raw_request(port(strict), "/api/v1/public/a.b/%C3%A9?q=a;b&next=%2Fhome")
    assert response.status == 200
    assert response.json()["raw_path"].startswith("/api/v1/public/a.b/%C3%A9?q=a;b&next=%2Fhome")


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(target=SAMPLE)
def test_envoy_decides_a_generated_sample_like_the_model(strict: Stack, target: str) -> None:
    response = raw_request(port(strict), target)
    if violation(target) is not None:  # the Python model, equal to the compiled rule (test_path_policy.py)
        assert response.status == 400 and response.json()["error"] == "invalid_path", (target, response)
        return
    assert response.status == 200, (target, response)
    received = response.json()["raw_path"].split("?", 1)[0]
    assert received == target.split("?", 1)[0]  # routed and forwarded as sent, nothing rewritten
    assert all(r.startswith(PUBLIC) for r in interpretations(received).values())


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (HTTP/2 prior knowledge, --path-as-is)")
def test_http2_requests_meet_the_same_policy(strict: Stack) -> None:
    def h2(target: str) -> tuple[int, str, str]:
        out = subprocess.run(
            ["curl", "-s", "--http2-prior-knowledge", "--path-as-is", "-H", "x-request-id: req-h2",
             "-w", "\n%{http_code} %{http_version}", f"http://127.0.0.1:{port(strict)}{target}"],
            capture_output=True, text=True, timeout=10, check=True).stdout
        body, _, status = out.rpartition("\n")
        code, version = status.split()
        return int(code), version, body

    for target in [*ISSUE_EXAMPLES, "/api/v1/public/..;/admin/x", "/api/v1/public/%2e%2e/admin/x",
                   "/api/v1/public/a\\..\\admin", "/api/v1/public/x;y"]:
        code, version, body = h2(target)
        assert (code, version) == (400, "2"), target
        assert json.loads(body) == {"error": "invalid_path", "request_id": "req-h2"}
    assert h2("/api/v1/public/x")[:2] == (200, "2")


def _check(stack: Stack, path: str) -> external_auth_pb2.CheckResponse:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.method = "GET"
    request.attributes.request.http.path = path
    address = f"127.0.0.1:{stack.data['services']['ext_authz']['port']}"
    with grpc.insecure_channel(address) as channel:
        reply: external_auth_pb2.CheckResponse = external_auth_pb2_grpc.AuthorizationStub(channel).Check(
            request, timeout=5)
    return reply


def test_direct_check_without_context_matches_the_normalised_path_only(strict: Stack) -> None:
    """An Envoy configured by someone else sends no context_extensions: the fallback rules decide, on the
    canonical path, and refuse a confusing one instead of matching its raw prefix."""
    assert _check(strict, "/api/v1/public/x").status.code == code_pb2.OK
    for target in ["/api/v1/public/..;/admin/x", "/api/v1/public/..%3b/admin/x", "/api/v1/public/%2e%2e/admin/x",
                   "/api/v1/public/%c0%ae%c0%ae/admin/x", "/api/v1/public/...//admin/x"]:
        reply = _check(strict, target)
        assert reply.status.code == code_pb2.PERMISSION_DENIED, target
        assert reply.denied_response.status.code == 403


# ---- a route that allows ;parameters, and Envoy's normalisation (edge.non_canonical_paths: normalize) ---

def test_only_the_route_that_allows_parameters_gets_them(lenient: Stack) -> None:
    allowed = raw_request(port(lenient), "/api/v1/legacy/cart;jsessionid=abc")
    assert allowed.status == 200
    assert allowed.json()["raw_path"].startswith("/api/v1/legacy/cart;jsessionid=abc")
    assert_refused(lenient, "/api/v1/public/x;jsessionid=abc")
    assert_refused(lenient, "/api/v1/users/profile;x=1")  # a guard in front of every other route, protected too
    assert_refused(lenient, "/api/v1/legacy/x%3bjsessionid=abc")  # an encoded `;` is never a parameter


@pytest.mark.parametrize("target", [*ISSUE_EXAMPLES, "/api/v1/public/%252e%252e/admin/x", "/api/v1/public/%2Fx",
                                    "/api/v1/public/x;y"])
def test_normalize_mode_refuses_what_normalisation_leaves_confusing(lenient: Stack, target: str) -> None:
    assert_refused(lenient, target)


@pytest.mark.parametrize("target", ["/api/v1/public/%2e%2e/admin/x", "/api/v1/public/../admin/x",
                                    "/api/v1/public/..;/admin/x", "/api/v1/legacy/..;/admin/x",
                                    "/api/v1/legacy/..;x/admin/x"])
def test_normalize_mode_routes_what_it_resolved_as_resolved(lenient: Stack, target: str) -> None:
    # Envoy resolved it into /api/v1/admin/x and routes it there: a token is needed, nothing is public.
    # (Envoy 1.40's normaliser reads `..;x` as `..`, the way Tomcat does.)
    assert raw_request(port(lenient), target).status == 401


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(target=SAMPLE)
def test_normalize_mode_never_serves_a_public_path_that_resolves_elsewhere(lenient: Stack, target: str) -> None:
    response = raw_request(port(lenient), target)
    assert response.status in (200, 400, 401, 404), (target, response)
    if response.status != 200:
        return
    received = response.json()["raw_path"].split("?", 1)[0]
    route = route_for(lenient, received)
    assert route is not None and route.get("public"), (target, received)
    prefix = route["match"].get("prefix", received)
    assert all(r.startswith(prefix) for r in interpretations(received).values()), (target, received)
