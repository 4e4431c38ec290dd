"""Prometheus /metrics endpoint for one service process."""

from __future__ import annotations

from prometheus_client import start_http_server

from outrider.workers import metrics_served_by_parent


def start_metrics_server(address: str, port: int) -> None:
    """Serve the default registry at http://address:port/metrics from a background thread.

    In a worker of a multi-worker service the supervising parent serves the aggregate instead.
    """
    if metrics_served_by_parent():
        return
    start_http_server(port, addr=address)
