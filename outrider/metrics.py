"""Prometheus /metrics endpoint for one service process."""

from __future__ import annotations

from prometheus_client import start_http_server


def start_metrics_server(address: str, port: int) -> None:
    """Serve the default registry at http://address:port/metrics from a background thread."""
    start_http_server(port, addr=address)
