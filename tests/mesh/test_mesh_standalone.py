"""Our services in standalone mode behind a mesh's own Envoy: configured as Istio and Envoy Gateway configure it.

The Envoys here run the fixtures in tests/mesh/fixtures/ (each cites the mesh's source for its filter
settings, path normalisation, headers and timeouts), never outrider's compiled bootstrap: no
context_extensions reach ext_authz, so its fallback rules decide from its own config file
(`python -m ext_authz --config FILE`, as ratelimit_service and ext_proc). Issue 12's cases: the decisions
that held, the three fallback fail-opens (non-canonical paths, direct-response routes, header conditions),
/health/live, Authorization on public paths, Envoy Gateway's rate limit domain and descriptors.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from outrider.config import load_config
from outrider.path_policy import canonical_path, path_only
from outrider.process import ManagedProcess, free_port, http_ready
from outrider.supervisor import envoy_argv, plan_processes
from tests.edge.conftest import RawResponse, raw_request
from tests.harness import ROOT, Stack, example_config_dict, with_free_ports, write_config

FIXTURES = Path(__file__).parent / "fixtures"
EG_DOMAIN = "default/eg/http"
# A public route whose upstream is another app's: the gateway blocks part of it with a direct response.
BLOCKED = {"name": "internal", "match": {"prefix": "/api/v1/public/internal/"},
           "direct_response": {"status": 404, "body": '{"error":"not_found"}'}}
PREVIEW_PUBLIC = {"name": "preview-public", "upstream": "demo", "public": True,
                  "match": {"prefix": "/api/v1/preview/", "headers": [{"name": "x-preview", "exact": "1"}]}}
PREVIEW = {"name": "preview", "upstream": "demo", "resource": "profile", "match": {"prefix": "/api/v1/preview/"}}


def gateway_config() -> dict[str, Any]:
    data = example_config_dict()
    data["services"]["xds"]["enabled"] = False  # standalone: each service reads the file itself
    routes = data["routes"]
    routes.insert(1, BLOCKED)
    routes[2:2] = [PREVIEW_PUBLIC, PREVIEW]
    rl = data["rate_limits"]
    rl["tiers"]["free"] = [{"requests_per_unit": 3, "unit": "minute"}]
    # Envoy Gateway's descriptors for the BackendTrafficPolicy in examples/mesh/envoy-gateway/: rule 0 is the
    # free tier (x-user-tier Exact free), its user the Distinct x-user-id.
    rl["mesh"] = [{"domain": EG_DOMAIN, "descriptors": [
        {"match": {"rule-0-match-0": "rule-0-match-0"}, "tier": "free", "user": "rule-0-match-1"}]}]
    return data


@dataclass
class Services:
    data: dict[str, Any]
    workdir: Path
    procs: list[ManagedProcess]

    def port(self, service: str) -> int:
        return int(self.data["services"][service]["port"])


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    workdir = tmp_path_factory.mktemp("mesh")
    data = with_free_ports(gateway_config())
    path = write_config(data, workdir / "gateway.yaml")
    procs = [p for p in plan_processes(load_config(path), path, workdir, log_dir=workdir) if p.name != "envoy"]
    started: list[ManagedProcess] = []
    try:
        for proc in procs:
            proc.cwd = ROOT
            started.append(proc.start())
            proc.wait_ready(30)
        yield Services(data, workdir, started)
    finally:
        for proc in reversed(started):
            proc.stop()


@dataclass
class Mesh:
    kind: str
    port: int
    admin_port: int
    services: Services

    def get(self, target: str, headers: dict[str, str] | None = None) -> RawResponse:
        """The request target sent byte for byte (no client-side normalisation), the body de-chunked."""
        response = raw_request(self.port, target, headers)
        if response.headers.get("transfer-encoding") == "chunked":
            body, rest = b"", response.body
            while rest:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    break
                body, rest = body + rest[:size], rest[size + 2:]
            response = RawResponse(response.status, response.headers, body)
        return response

    def token(self, sub: str = "alice", roles: tuple[str, ...] = ("user",), tier: str = "free") -> str:
        stack = Stack(Path(), self.services.data, self.services.workdir)
        return stack.token(sub, roles, tier)

    def upstream_requests(self) -> int:
        cluster = "httproute/default/api/rule/0" if self.kind == "envoy-gateway" else \
            "outbound|8080||demo.default.svc.cluster.local"
        text = httpx.get(f"http://127.0.0.1:{self.admin_port}/stats", timeout=5).text
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == f"cluster.{cluster}.upstream_rq_total":
                return int(value)
        return 0


MESHES = ["istio", "istio-none", "envoy-gateway"]


@pytest.fixture(scope="module", params=MESHES)
def mesh(request: pytest.FixtureRequest, services: Services) -> Iterator[Mesh]:
    kind: str = request.param
    fixture = FIXTURES / ("envoy-gateway.yaml" if kind == "envoy-gateway" else "istio.yaml")
    port, admin = free_port(), free_port()
    text = string.Template(fixture.read_text()).substitute(
        ADMIN_PORT=admin, LISTENER_PORT=port, NORMALIZE_PATH="false" if kind == "istio-none" else "true",
        UPSTREAM_PORT=services.data["services"]["demo_upstream"]["port"], AUTHZ_PORT=services.port("ext_authz"),
        EXTPROC_PORT=services.port("ext_proc"), RATELIMIT_PORT=services.port("ratelimit"))
    bootstrap = services.workdir / f"envoy-{kind}.yaml"
    bootstrap.write_text(text)
    envoy = ManagedProcess(f"envoy-{kind}", envoy_argv(bootstrap), ready=http_ready(f"http://127.0.0.1:{admin}/ready"),
                           log_path=services.workdir / f"envoy-{kind}.log", cwd=ROOT)
    envoy.start().wait_ready(30)
    try:
        yield Mesh(kind, port, admin, services)
    finally:
        envoy.stop()


def echo(response: RawResponse) -> dict[str, Any]:
    """What the demo upstream received (it answers with a JSON description of the request)."""
    assert response.status == 200, response
    doc: dict[str, Any] = json.loads(response.body)
    return doc


# ---- the decisions that held --------------------------------------------------------------------------


def test_public_and_protected_with_and_without_token(mesh: Mesh) -> None:
    assert echo(mesh.get("/api/v1/public/hello"))["path"] == "/api/v1/public/hello"
    refused = mesh.get("/api/v1/users/profile")
    assert refused.status == 401 and refused.headers["www-authenticate"] == "Bearer"
    seen = echo(mesh.get("/api/v1/users/profile", {"authorization": f"Bearer {mesh.token()}",
                                                   "x-user-id": "mallory"}))
    assert seen["headers"]["x-user-id"] == "alice"  # overwritten, never the client's
    assert mesh.get("/api/v1/admin/x", {"authorization": f"Bearer {mesh.token()}"}).status == 403


def test_ext_proc_transform_applies(mesh: Mesh) -> None:
    # The global request rules (no route metadata from a foreign Envoy: the service's default plan).
    assert echo(mesh.get("/api/v1/public/hello"))["headers"]["x-gateway-version"] == "1.0"


# ---- issue 12's fail-opens, now denies ----------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "/api/v1/public/..%2Fusers%2Fprofile",   # the issue's case: Istio's default (BASE) leaves %2F encoded
    "/api/v1/public/..%5Cusers%5Cprofile",
    "/api/v1/public/%2e%2e/users/profile",   # normalize_path decodes %2e (unreserved): then `..` resolves
    "/api/v1/public//../users/profile",      # merge_slashes false (Istio): `//` reaches ext_authz, or not
    "/api/v1/public/..;/users/profile",      # `..;`: Tomcat/Spring resolve it, Envoy does not
])
def test_non_canonical_paths_are_never_approved_as_public(mesh: Mesh, target: str) -> None:
    """Whatever the mesh's normalisation made of the path, the upstream never receives a path it would read
    as protected after ext_authz approved it as public: either the request is refused (400/403), sent to
    the canonical path (a redirect), or refused there (401), or what the upstream gets is canonical."""
    before = mesh.upstream_requests()
    response = mesh.get(target)
    if response.status in (301, 302, 307, 308):
        # Envoy Gateway's UNESCAPE_AND_REDIRECT: the client is sent to the unescaped, normalised path.
        location = response.headers["location"]
        assert mesh.get(location.split("gateway", 1)[-1]).status in (401, 403), location
    elif response.status == 200:
        received = path_only(echo(response)["raw_path"])  # ext_proc added ?version=v1
        assert canonical_path(received) == received and received.startswith("/api/v1/public/"), received
        return
    else:
        assert response.status in (400, 401, 403), response
    assert mesh.upstream_requests() == before


def test_the_issue_case_is_a_403_behind_istio(mesh: Mesh) -> None:
    if mesh.kind == "envoy-gateway":
        pytest.skip("Envoy Gateway redirects to the unescaped path (above)")
    response = mesh.get("/api/v1/public/..%2Fusers%2Fprofile")
    assert response.status == 403 and json.loads(response.body)["error"] == "forbidden", response


def test_plain_dot_dot_behind_a_default_envoy_is_refused(mesh: Mesh) -> None:
    response = mesh.get("/api/v1/public/../users/profile")
    if mesh.kind == "istio-none":
        # No normalisation: the raw `..` reaches ext_authz, which refuses it rather than match it as public.
        assert response.status == 403 and json.loads(response.body)["error"] == "forbidden", response
    else:
        # normalize_path resolved it to the protected path before routing: a 401 without a token.
        assert response.status == 401, response


def test_a_direct_response_route_is_not_public(mesh: Mesh) -> None:
    before = mesh.upstream_requests()
    response = mesh.get("/api/v1/public/internal/secrets")
    assert (response.status, response.body) == (404, b'{"error":"not_found"}')
    assert mesh.upstream_requests() == before


def test_header_conditions_decide(mesh: Mesh) -> None:
    assert mesh.get("/api/v1/preview/x").status == 401
    assert mesh.get("/api/v1/preview/x", {"x-preview": "2"}).status == 401
    assert echo(mesh.get("/api/v1/preview/x", {"x-preview": "1"}))["path"] == "/api/v1/preview/x"


# ---- health and credentials on public paths -----------------------------------------------------------


def test_health_live_is_answered(mesh: Mesh) -> None:
    before = mesh.upstream_requests()
    response = mesh.get("/health/live")
    assert (response.status, json.loads(response.body)) == (200, {"status": "live"})
    assert mesh.upstream_requests() == before


def test_authorization_never_reaches_a_public_upstream(mesh: Mesh) -> None:
    seen = echo(mesh.get("/api/v1/public/hello", {"authorization": f"Bearer {mesh.token()}"}))
    assert "authorization" not in seen["headers"] and "x-auth-token" not in seen["headers"]
    assert "x-user-id" not in seen["headers"]


# ---- global rate limit on our RLS: the tier plans ----------------------------------------------------


def test_rate_limit_reaches_the_tier_plan(mesh: Mesh) -> None:
    """Envoy Gateway: its domain (default/eg/http) and rule descriptors, read by rate_limits.mesh. Istio: the
    EnvoyFilter's metadata actions build our own descriptors from ext_authz's dynamic metadata."""
    headers = {"authorization": f"Bearer {mesh.token(f'rl-{mesh.kind}')}"}
    answers = [mesh.get("/api/v1/users/profile", headers) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429], answers
    # The free plan (3 a minute) as the filter reports it (DRAFT_VERSION_03 headers from our limit).
    assert answers[0].headers["x-ratelimit-limit"].startswith("3, 3;w=60"), answers[0].headers
    assert json.loads(answers[3].body)["error"] == "rate_limited"
    # Per user: another free user still has the whole plan; public requests carry no identity, no plan.
    other = {"authorization": f"Bearer {mesh.token(f'rl-other-{mesh.kind}')}"}
    assert mesh.get("/api/v1/users/profile", other).status == 200
    assert all(mesh.get("/api/v1/public/x").status == 200 for _ in range(4))
