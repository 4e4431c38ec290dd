"""Envoy's edge settings through the real Envoy: header and request timeouts, the connection limit, headers a
client may not set (method overrides, the gateway's own), and trusted hops for the client address.

Settings per Envoy's "Configuring Envoy as an edge proxy" best practices
(https://www.envoyproxy.io/docs/envoy/latest/configuration/best_practices/edge).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest

from outrider.config import load_config
from outrider.config.schema import config_from_data
from outrider.envoy_config import compile_bootstrap, compile_listeners
from tests.conftest import start_stack
from tests.edge.conftest import counter, edge_config, raw_request
from tests.harness import EXAMPLE_CONFIG, Stack, example_config_dict

HEADERS_TIMEOUT_MS = 1000
REQUEST_TIMEOUT_MS = 3000
MAX_CONNECTIONS = 20
OVERRIDES = {"x-http-method-override": "DELETE", "x-http-method": "PUT", "x-method-override": "PATCH"}


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The example config's edge: every default (no trusted hops)."""
    running = start_stack(tmp_path_factory.mktemp("default"), edge_config())
    yield running
    running.stop()


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Short timeouts and a small connection limit (to test them in seconds), one trusted proxy in front."""
    running = start_stack(tmp_path_factory.mktemp("tuned"), edge_config(
        request_headers_timeout_ms=HEADERS_TIMEOUT_MS, request_timeout_ms=REQUEST_TIMEOUT_MS,
        max_connections=MAX_CONNECTIONS, xff_num_trusted_hops=1))
    yield running
    running.stop()


def port(stack: Stack) -> int:
    return int(stack.data["listeners"][0]["port"])


def closed_by_peer(sock: socket.socket, wait_s: float) -> bool:
    """Whether Envoy closed (or reset) the connection within wait_s; whatever it answered first is read."""
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            return False
        try:
            if sock.recv(65536) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


# ---- timeouts and the connection limit -----------------------------------------------------------------

def test_unfinished_headers_are_closed_after_the_headers_timeout(tuned: Stack) -> None:
    with socket.create_connection(("127.0.0.1", port(tuned)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /api/v1/public/x HTTP/1.1\r\nhost: gateway\r\nx-slow: ")  # and never the rest
        assert not closed_by_peer(sock, HEADERS_TIMEOUT_MS / 1000 * 0.5)  # open while within the timeout
        assert closed_by_peer(sock, 5.0)
        elapsed = time.monotonic() - started
    assert HEADERS_TIMEOUT_MS / 1000 * 0.9 <= elapsed <= HEADERS_TIMEOUT_MS / 1000 + 3
    assert counter(tuned, "http.public.downstream_rq_header_timeout") >= 1


def _slow_body(stack: Stack) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port(stack)), timeout=10)
    sock.sendall(b"POST /api/v1/public/upload HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
                 b"content-length: 100000\r\n\r\n{")
    return sock


def test_slow_bodies_beyond_the_connection_limit_are_refused_and_the_rest_time_out(tuned: Stack) -> None:
    overflow_before = counter(tuned, f"listener.127.0.0.1_{port(tuned)}.downstream_global_cx_overflow")
    socks = [_slow_body(tuned) for _ in range(50)]
    try:
        time.sleep(0.5)  # not a readiness wait: the refused ones are closed on accept, this only lets them land
        refused = [s for s in socks if closed_by_peer(s, 0.05)]
        kept = [s for s in socks if s not in refused]
        assert len(kept) <= MAX_CONNECTIONS, f"{len(kept)} slow-body connections kept, limit {MAX_CONNECTIONS}"
        assert len(refused) >= 50 - MAX_CONNECTIONS
        overflow = counter(tuned, f"listener.127.0.0.1_{port(tuned)}.downstream_global_cx_overflow")
        assert overflow - overflow_before >= 50 - MAX_CONNECTIONS
        # The ones kept send nothing more: request_timeout ends them (408), none is held for ever.
        started = time.monotonic()
        assert all(closed_by_peer(s, REQUEST_TIMEOUT_MS / 1000 + 5) for s in kept)
        assert time.monotonic() - started <= REQUEST_TIMEOUT_MS / 1000 + 5
    finally:
        for s in socks:
            s.close()
    # Connections free again: the gateway answers.
    deadline = time.monotonic() + 10
    while raw_request(port(tuned), "/api/v1/public/x").status != 200:
        assert time.monotonic() < deadline


# ---- headers a client may not set -----------------------------------------------------------------------

def test_method_override_headers_never_reach_the_upstream(default: Stack) -> None:
    public = default.get("/api/v1/public/x", headers=OVERRIDES).json()["headers"]
    assert not set(OVERRIDES) & set(public)
    # Also where RBAC decided on the method: a GET (read) must not turn into a DELETE upstream.
    token = default.token(roles=("user",))
    checked = default.get("/api/v1/files/a", headers={**OVERRIDES, "authorization": f"Bearer {token}"})
    assert checked.status_code == 200
    assert not set(OVERRIDES) & set(checked.json()["headers"])


def test_client_x_auth_token_never_reaches_the_upstream(default: Stack) -> None:
    public = default.get("/api/v1/public/x", headers={"x-auth-token": "Bearer forged", "x-gateway-version": "9"})
    headers = public.json()["headers"]
    assert "x-auth-token" not in headers
    assert headers["x-gateway-version"] == "1.0"
    # Where the gateway sets it (the checked Authorization, renamed), it is the gateway's value alone.
    token = default.token()
    checked = default.get("/api/v1/users/profile",
                          headers={"authorization": f"Bearer {token}", "x-auth-token": "Bearer forged"})
    assert checked.status_code == 200
    assert checked.json()["headers"]["x-auth-token"] == f"Bearer {token}"


# ---- the client address ---------------------------------------------------------------------------------

def test_without_trusted_hops_a_client_x_forwarded_for_is_not_believed(default: Stack) -> None:
    headers = default.get("/api/v1/public/x", headers={"x-forwarded-for": "203.0.113.9"}).json()["headers"]
    assert headers["x-envoy-external-address"] == "127.0.0.1"
    assert headers["x-forwarded-for"] == "127.0.0.1"  # ${client_ip}: Envoy's downstream address


def test_with_one_trusted_hop_the_proxys_entry_is_the_client(tuned: Stack) -> None:
    # The trusted proxy appended the address it saw (203.0.113.9); what the client wrote before it is ignored.
    sent = {"x-forwarded-for": "6.6.6.6, 203.0.113.9"}
    headers = tuned.get("/api/v1/public/x", headers=sent).json()["headers"]
    assert headers["x-envoy-external-address"] == "203.0.113.9"
    assert headers["x-forwarded-for"] == "203.0.113.9"


# ---- the compiled settings --------------------------------------------------------------------------------

def test_defaults_are_the_edge_best_practices() -> None:
    bootstrap = compile_bootstrap(load_config(EXAMPLE_CONFIG))
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][-1]["typed_config"]
    assert hcm["use_remote_address"] is True and hcm["xff_num_trusted_hops"] == 0
    assert hcm["request_headers_timeout"] == "10.000s"
    assert hcm["stream_idle_timeout"] == "300.000s" and hcm["request_timeout"] == "300.000s"
    assert hcm["common_http_protocol_options"] == {
        "idle_timeout": "3600.000s", "headers_with_underscores_action": "REJECT_REQUEST", "max_headers_count": 100}
    assert hcm["http2_protocol_options"] == {"max_concurrent_streams": 100, "initial_stream_window_size": 65536,
                                             "initial_connection_window_size": 1048576}
    assert listener["per_connection_buffer_limit_bytes"] == 1048576
    overload = bootstrap["overload_manager"]
    monitors = {m["name"]: m["typed_config"] for m in overload["resource_monitors"]}
    assert monitors["envoy.resource_monitors.global_downstream_max_connections"][
        "max_active_downstream_connections"] == 50_000
    assert monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"] == 1 << 30
    actions = {a["name"]: a["triggers"][0]["threshold"]["value"] for a in overload["actions"]}
    assert actions == {"envoy.overload_actions.shrink_heap": 0.95,
                       "envoy.overload_actions.stop_accepting_requests": 0.98}
    assert bootstrap["admin"]["ignore_global_conn_limit"] is True


def test_the_stripped_set_follows_the_config() -> None:
    """Every header a rule sets for the upstream (any route's renames and adds), the identity headers and the
    method overrides; never an if_absent add (the client's value is kept by design) nor Envoy's own."""
    data = example_config_dict()
    data["routes"][1]["transformations"] = {"request": {
        "rename_headers": {"X-Api-Key": "X-Client-Key"},
        "add_headers": {"X-Tenant": "acme", "X-Trace": {"value": "${uuid()}", "if_absent": True}}}}
    hcm = compile_listeners(config_from_data(data, EXAMPLE_CONFIG.parent))[0]["filter_chains"][0]["filters"][-1][
        "typed_config"]
    (early,) = hcm["early_header_mutation_extensions"]
    removed = {m["remove"] for m in early["typed_config"]["mutations"]}
    assert {"x-client-key", "x-tenant", "x-auth-token", "x-gateway-version", "x-user-id", "x-user-roles",
            "x-user-tier", "x-user-email", *OVERRIDES} <= removed
    assert not {"x-trace", "x-request-id", "x-forwarded-for", "authorization"} & removed


def test_envoy_runs_the_overload_manager(default: Stack) -> None:
    """Loaded from the ADS bootstrap `outrider run` writes: both monitors report, no action is active."""
    import httpx

    stats = httpx.get(f"{default.admin_url}/stats", params={"filter": "^overload\\."}, timeout=5).text
    values = dict(line.split(": ", 1) for line in stats.splitlines() if ": " in line)
    for monitor in ("fixed_heap", "global_downstream_max_connections"):
        assert int(values[f"overload.envoy.resource_monitors.{monitor}.pressure"]) < 95  # percent of the limit
        assert values[f"overload.envoy.resource_monitors.{monitor}.failed_updates"] == "0"
    for action in ("shrink_heap", "stop_accepting_requests"):
        assert values[f"overload.envoy.overload_actions.{action}.active"] == "0"
