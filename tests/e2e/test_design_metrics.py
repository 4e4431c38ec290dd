"""The design's metric names through real Envoy: each present and moving, and the Grafana dashboard's queries
naming only metrics a running gateway exposes."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from outrider.process import free_port
from tests.conftest import start_stack
from tests.harness import ROOT, Stack, example_config_dict

DASHBOARD = ROOT / "deploy" / "grafana" / "outrider-dashboard.json"

# Every name the design lists, as exposed (counters with _total, histograms by their _count sample).
DESIGN = {
    "http_requests_total", "http_request_duration_seconds_count", "http_requests_in_flight",
    "rate_limit_hits_total", "rate_limit_rejections_total", "circuit_breaker_state",
    "circuit_breaker_failures_total", "upstream_response_time_seconds_count", "upstream_errors_total",
    "upstream_timeouts_total", "cache_hits_total", "cache_misses_total", "cache_size_bytes",
}
Samples = dict[str, list[tuple[dict[str, str], float]]]


class HangingUpstream:
    """Accepts connections and never answers: requests to it time out, and hold the circuit breaker's slots."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def _config(demo_placeholder: int, hanging_port: int) -> dict:  # type: ignore[type-arg]
    data = example_config_dict()
    closed = free_port()  # nothing listens there: connect failures (5xx), outlier ejection
    data["upstreams"] += [
        # One endpoint, ejected after one failure: every endpoint ejected → open.
        {"name": "dead", "endpoints": [{"address": "127.0.0.1", "port": closed}],
         "outlier_detection": {"consecutive_5xx": 1, "base_ejection_time_ms": 60000, "max_ejection_percent": 100}},
        # One good endpoint (the demo's, rewritten by with_free_ports) and one dead: half-open once it is ejected.
        {"name": "half", "endpoints": [{"address": "127.0.0.1", "port": demo_placeholder},
                                       {"address": "127.0.0.1", "port": closed}],
         "outlier_detection": {"consecutive_5xx": 1, "base_ejection_time_ms": 60000, "max_ejection_percent": 50}},
        {"name": "slow", "endpoints": [{"address": "127.0.0.1", "port": hanging_port}],
         "circuit_breaker": {"max_connections": 1, "max_pending_requests": 1, "max_requests": 1}},
        {"name": "hold", "endpoints": [{"address": "127.0.0.1", "port": hanging_port}]},
    ]
    routes = [{"name": name, "match": {"prefix": f"/api/v1/{name}/"}, "upstream": name, "public": True,
               "timeout_ms": 30000 if name == "hold" else 300} for name in ("dead", "half", "slow", "hold")]
    data["routes"] = routes + data["routes"]
    data["rate_limits"]["tiers"]["free"] = [{"requests_per_unit": 2, "unit": "minute"}]
    data["cache"]["rules"].append({"path": "/api/v1/public/cached/**", "ttl_s": 300})
    return data


@pytest.fixture(scope="module")
def hanging() -> Iterator[HangingUpstream]:
    upstream = HangingUpstream()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def metrics_stack(tmp_path_factory: pytest.TempPathFactory, hanging: HangingUpstream) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("metrics"), _config(18080, hanging.port))
    yield running
    running.stop()


def scrape_text(stack: Stack) -> str:
    """Every outrider service's /metrics: what Prometheus scrapes of one gateway."""
    ports = [stack.data["services"][name]["metrics_port"] for name in ("ext_authz", "ratelimit", "ext_proc")]
    return "".join(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text for port in ports)


def scrape(stack: Stack) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(scrape_text(stack)):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def declared(text: str) -> set[str]:
    """The sample names of every family a scrape declares (# TYPE): there even before any traffic."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        else:
            names.add(f"{name}_total" if kind == "counter" and not name.endswith("_total") else name)
    return names


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if all(found.get(k) == x for k, x in labels.items()))


def value(samples: Samples, name: str, **labels: str) -> float | None:
    found = [v for got, v in samples.get(name, []) if all(got.get(k) == x for k, x in labels.items())]
    return found[0] if found else None


def test_each_design_metric_is_present_and_moves(metrics_stack: Stack, hanging: HangingUpstream) -> None:
    stack = metrics_stack
    text = scrape_text(stack)
    assert declared(text) >= DESIGN, f"not declared: {sorted(DESIGN - declared(text))}"
    before = scrape(stack)
    assert value(before, "outrider_envoy_stats_up") == 1

    token = stack.token()
    with stack.client() as client:
        for _ in range(2):
            assert client.get("/api/v1/public/cached/a").status_code == 200       # miss, then hit
        assert client.get("/api/v1/users/profile").status_code == 401            # ext_authz's own reply
        statuses = [client.get("/api/v1/messages/x", headers={"Authorization": f"Bearer {token}"}).status_code
                    for _ in range(3)]
        assert statuses[-1] == 429, statuses
        for _ in range(2):
            assert client.get("/api/v1/dead/x").status_code == 503
        for _ in range(4):
            client.get("/api/v1/half/x")
        # Two at once against one connection, one request, one pending slot: the breaker refuses some.
        with ThreadPoolExecutor(4) as pool:
            slow = list(pool.map(lambda _: stack.get("/api/v1/slow/x").status_code, range(4)))
    assert 504 in slow and 503 in slow, slow

    def moved() -> bool:
        after = scrape(stack)
        checks = {
            "http 200": total(after, "http_requests_total", route="demo", status="200")
            > total(before, "http_requests_total", route="demo", status="200"),
            "http 401": total(after, "http_requests_total", route="demo", status="401") >= 1,
            "http 503": total(after, "http_requests_total", route="dead", status="503") >= 2,
            # Histograms reach the admin at Envoy's stats flush (every 5 s).
            "duration": total(after, "http_request_duration_seconds_count")
            > total(before, "http_request_duration_seconds_count"),
            "upstream time": total(after, "upstream_response_time_seconds_count", upstream="demo")
            > total(before, "upstream_response_time_seconds_count", upstream="demo"),
            "rl hits": total(after, "rate_limit_hits_total") > total(before, "rate_limit_hits_total"),
            "rl rejections": total(after, "rate_limit_rejections_total") >= 1,
            "breaker open": value(after, "circuit_breaker_state", upstream="dead") == 1,
            "breaker half-open": value(after, "circuit_breaker_state", upstream="half") == 2,
            "breaker closed": value(after, "circuit_breaker_state", upstream="demo") == 0,
            "breaker failures": total(after, "circuit_breaker_failures_total", upstream="slow") >= 1,
            "upstream errors": total(after, "upstream_errors_total", upstream="dead") >= 2,
            "timeouts": total(after, "upstream_timeouts_total", upstream="slow") >= 1,
            "cache hits": total(after, "cache_hits_total") == total(before, "cache_hits_total") + 1,
            "cache misses": total(after, "cache_misses_total") > total(before, "cache_misses_total"),
            "cache size": total(after, "cache_size_bytes") > total(before, "cache_size_bytes"),
        }
        failing = [name for name, ok in checks.items() if not ok]
        moved.failing = failing  # type: ignore[attr-defined]
        return not failing

    try:
        Stack.wait_until(moved, timeout_s=15, what="every design metric to move")
    except AssertionError:
        raise AssertionError(f"did not move: {moved.failing}") from None  # type: ignore[attr-defined]


def test_in_flight_counts_a_held_request(metrics_stack: Stack) -> None:
    """http_requests_in_flight is Envoy's live gauge: up while a request hangs, down once its client leaves."""
    stack = metrics_stack
    port = stack.data["listeners"][0]["port"]
    # A raw connection: the request stays in flight (its route waits 30 s) until the test closes it.
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET /api/v1/hold/x HTTP/1.1\r\nHost: gateway\r\n\r\n")
        Stack.wait_until(lambda: total(scrape(stack), "http_requests_in_flight", listener="public") >= 1,
                         what="a request in flight")
    Stack.wait_until(lambda: total(scrape(stack), "http_requests_in_flight", listener="public") == 0,
                     what="no request in flight")


def test_with_workers_the_parent_serves_the_gateway_metrics(tmp_path: Path) -> None:
    """ext_authz with workers: 2 (multiprocess metrics): its parent's aggregate carries Envoy's figures."""
    data = example_config_dict()
    data["services"]["ext_authz"]["workers"] = 2
    stack = start_stack(tmp_path, data)
    try:
        assert stack.get("/api/v1/public/x").status_code == 200
        Stack.wait_until(lambda: total(scrape(stack), "http_requests_total", route="demo", status="200") >= 1,
                         what="http_requests_total from the workers' parent")
        assert value(scrape(stack), "outrider_envoy_stats_up") == 1
    finally:
        stack.stop()


# ---- the dashboard ---------------------------------------------------------------------------------------

PROMQL_WORDS = {"sum", "min", "max", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "by",
                "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
                "clamp_min", "clamp_max", "abs", "topk", "bottomk", "delta", "deriv", "vector", "scalar", "time"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside strings, label matchers, ranges
    and grouping clauses that are neither functions nor keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)                                 # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)                                          # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                                         # ranges, $__rate_interval
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", expr):
        word, call = match.groups()
        if call is None and word not in PROMQL_WORDS:
            names.add(word)
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(Path(DASHBOARD).read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_promql_metric_names() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, upstream) (rate(upstream_response_time_seconds_bucket'
            '{upstream=~"a|b"}[$__rate_interval]))) / on (x) group_left sum(cache_hits_total offset 5m)')
    assert promql_metric_names(expr) == {"upstream_response_time_seconds_bucket", "cache_hits_total"}


def test_dashboard_shows_every_design_metric_and_only_exposed_ones(metrics_stack: Stack) -> None:
    exposed = declared(scrape_text(metrics_stack))
    queried: set[str] = set()
    for title, expr in dashboard_queries():
        names = promql_metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        unknown = names - exposed
        assert not unknown, f"panel {title!r}: {sorted(unknown)} not exposed by the gateway"
        queried |= names
    families = {re.sub(r"_(bucket|count|sum)$", "_count", name) for name in queried}
    assert families >= DESIGN, f"not on the dashboard: {sorted(DESIGN - families)}"
