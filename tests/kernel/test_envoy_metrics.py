"""outrider/envoy_metrics.py: Envoy's Prometheus stats renamed to the design's metrics, nothing counted twice."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from outrider.envoy_metrics import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    STATS_FILTER,
    EnvoyStatsCollector,
    breaker_state,
    design_metrics,
    parse_stats,
)
from outrider.process import free_port

# The shape of Envoy 1.40's /stats/prometheus (tag-extracted names, histograms in ms).
ENVOY = """\
# TYPE envoy_cluster_upstream_rq counter
envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="demo"} 7
envoy_cluster_upstream_rq{envoy_response_code="429",envoy_cluster_name="demo"} 2
envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="outrider_ext_authz"} 9
envoy_cluster_upstream_rq{envoy_response_code="503",envoy_cluster_name="orders"} 3
# TYPE envoy_cluster_upstream_rq_xx counter
envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="orders"} 3
envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="demo"} 7
# TYPE envoy_cluster_upstream_rq_timeout counter
envoy_cluster_upstream_rq_timeout{envoy_cluster_name="orders"} 1
# TYPE envoy_cluster_upstream_rq_pending_overflow counter
envoy_cluster_upstream_rq_pending_overflow{envoy_cluster_name="orders"} 4
# TYPE envoy_cluster_upstream_cx_overflow counter
envoy_cluster_upstream_cx_overflow{envoy_cluster_name="orders"} 1
# TYPE envoy_cluster_circuit_breakers_default_rq_open gauge
envoy_cluster_circuit_breakers_default_rq_open{envoy_cluster_name="orders"} 1
envoy_cluster_circuit_breakers_default_rq_open{envoy_cluster_name="demo"} 0
# TYPE envoy_cluster_outlier_detection_ejections_active gauge
envoy_cluster_outlier_detection_ejections_active{envoy_cluster_name="demo"} 1
# TYPE envoy_cluster_membership_total gauge
envoy_cluster_membership_total{envoy_cluster_name="demo"} 2
envoy_cluster_membership_total{envoy_cluster_name="orders"} 1
# TYPE envoy_http_downstream_rq_active gauge
envoy_http_downstream_rq_active{envoy_http_conn_manager_prefix="admin"} 1
envoy_http_downstream_rq_active{envoy_http_conn_manager_prefix="public"} 5
# TYPE envoy_http_downstream_rq_time histogram
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="public",le="5"} 3
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="public",le="250"} 4
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="public",le="+Inf"} 4
envoy_http_downstream_rq_time_sum{envoy_http_conn_manager_prefix="public"} 260
envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix="public"} 4
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="admin",le="+Inf"} 8
# TYPE envoy_cluster_upstream_rq_time histogram
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="demo",le="1"} 6
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="demo",le="+Inf"} 7
envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="demo"} 21.5
envoy_cluster_upstream_rq_time_count{envoy_cluster_name="demo"} 7
"""


def exposed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) → value, as a scrape of the collector shows them."""
    out = {}
    registry = _registry_of(design_metrics(parse_stats(text)))
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_requests_per_upstream_and_status_leave_out_the_services_clusters() -> None:
    got = exposed(ENVOY)
    requests = {labels: v for (name, labels), v in got.items() if name == "http_requests_total"}
    assert requests == {
        (("method", "*"), ("route", "demo"), ("status", "200")): 7,
        (("method", "*"), ("route", "demo"), ("status", "429")): 2,
        (("method", "*"), ("route", "orders"), ("status", "503")): 3,
    }


def test_histograms_are_converted_to_seconds_and_admin_is_not_traffic() -> None:
    got = exposed(ENVOY)
    public = (("listener", "public"),)
    assert got[("http_request_duration_seconds_bucket", (("le", "0.005"), *public))] == 3
    assert got[("http_request_duration_seconds_bucket", (("le", "0.25"), *public))] == 4
    assert got[("http_request_duration_seconds_count", public)] == 4
    assert got[("http_request_duration_seconds_sum", public)] == pytest.approx(0.26)
    assert got[("upstream_response_time_seconds_sum", (("upstream", "demo"),))] == pytest.approx(0.0215)
    assert got[("http_requests_in_flight", public)] == 5
    assert not [k for k in got if ("listener", "admin") in k[1]]


def test_breaker_errors_and_timeouts_per_upstream() -> None:
    got = exposed(ENVOY)
    assert got[("circuit_breaker_state", (("upstream", "orders"),))] == OPEN       # rq_open gauge
    assert got[("circuit_breaker_state", (("upstream", "demo"),))] == HALF_OPEN    # 1 of 2 ejected
    assert got[("circuit_breaker_failures_total", (("upstream", "orders"),))] == 5  # pending + cx overflow
    assert got[("circuit_breaker_failures_total", (("upstream", "demo"),))] == 0
    assert got[("upstream_errors_total", (("upstream", "orders"),))] == 3           # the 5xx class only
    assert got[("upstream_errors_total", (("upstream", "demo"),))] == 0
    assert got[("upstream_timeouts_total", (("upstream", "orders"),))] == 1


@pytest.mark.parametrize(("opened", "ejected", "endpoints", "state"), [
    (False, 0, 3, CLOSED), (True, 0, 3, OPEN), (False, 3, 3, OPEN), (False, 1, 3, HALF_OPEN), (True, 1, 3, OPEN),
])
def test_breaker_state(opened: bool, ejected: float, endpoints: float, state: int) -> None:
    assert breaker_state(opened, ejected, endpoints) == state


def test_every_design_family_is_declared_before_any_traffic() -> None:
    text = generate_latest(_registry_of(design_metrics(parse_stats("")))).decode()
    for name in ("http_requests_total", "http_request_duration_seconds", "http_requests_in_flight",
                 "circuit_breaker_state", "circuit_breaker_failures_total", "upstream_response_time_seconds",
                 "upstream_errors_total", "upstream_timeouts_total"):
        assert f"# TYPE {name} " in text


def test_envoy_unreachable_is_a_gauge_not_a_failed_scrape() -> None:
    registry = CollectorRegistry()
    registry.register(EnvoyStatsCollector(f"http://127.0.0.1:{free_port()}", timeout_s=0.5))
    text = generate_latest(registry).decode()
    assert "outrider_envoy_stats_up 0.0" in text
    assert "http_requests_total" not in text


def test_the_filter_keeps_what_the_mapping_reads() -> None:
    keep = re.compile(STATS_FILTER)
    for name in ("cluster.demo.upstream_rq_200", "cluster.demo.upstream_rq_5xx", "cluster.demo.upstream_rq_time",
                 "cluster.demo.circuit_breakers.default.rq_pending_open", "http.public.downstream_rq_active",
                 "cluster.demo.outlier_detection.ejections_active", "http.public.downstream_rq_time"):
        assert keep.match(name), name
    for name in ("cluster.demo.external.upstream_rq_200", "cluster.demo.upstream_rq_2xx",
                 "cluster.demo.circuit_breakers.high.rq_open", "listener.x.http.public.downstream_rq_5xx"):
        assert not keep.match(name), name


def _registry_of(metrics):  # type: ignore[no-untyped-def]
    metrics = list(metrics)

    class Fixed:
        def collect(self):  # type: ignore[no-untyped-def]
            return iter(metrics)

    registry = CollectorRegistry()
    registry.register(Fixed())  # type: ignore[arg-type]
    return registry
