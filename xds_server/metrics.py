"""Prometheus metrics and logs of the control plane, fed by the cache callbacks."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from outrider.metrics import per_registry
from xds_server.callbacks import Callbacks
from xds_server.protocol import DeltaResponse, Node, SotwResponse
from xds_server.snapshot import SHORT, short

log = logging.getLogger("xds_server")
SERVICE_TYPES = "type.googleapis.com/outrider.config.v1."


def _label(type_url: str) -> str:
    """A bounded label: a client names any type URL it likes, and each label value is a new time series."""
    known = type_url in SHORT or (type_url.startswith(SERVICE_TYPES) and type_url.isascii() and len(type_url) < 96)
    return short(type_url) if known else "other"


@dataclass(frozen=True)
class XdsMetrics:
    streams: Gauge
    requests: Counter
    responses: Counter
    acks: Counter
    nacks: Counter
    stale: Counter
    changes: Counter
    version: Gauge
    build_seconds: Histogram
    push_seconds: Histogram
    store_conflicts: Counter
    store_refreshes: Counter


def _build(registry: CollectorRegistry) -> XdsMetrics:
    return XdsMetrics(
        # Gauges say how processes combine should the control plane ever run as several (multiprocess mode).
        streams=Gauge("xds_streams", "Connected ADS streams", ["protocol"], multiprocess_mode="livesum",
                      registry=registry),
        requests=Counter("xds_requests_total", "Discovery requests received", ["type"], registry=registry),
        responses=Counter("xds_responses_total", "Discovery responses sent", ["type"], registry=registry),
        acks=Counter("xds_acks_total", "Responses ACKed", ["type"], registry=registry),
        nacks=Counter("xds_nacks_total", "Responses NACKed (the node keeps its last ACKed config)", ["type"],
                      registry=registry),
        stale=Counter("xds_stale_requests_total", "Requests answering a superseded nonce (ignored)", ["type"],
                      registry=registry),
        changes=Counter("xds_changes_total", "Config changes by source and outcome", ["source", "outcome"],
                        registry=registry),
        store_conflicts=Counter("xds_store_conflicts_total",
                                "Changes that lost the compare-and-set to another replica and were redone",
                                registry=registry),
        store_refreshes=Counter("xds_store_refreshes_total",
                                "Newer versions committed by another replica and now served here",
                                registry=registry),
        version=Gauge("xds_config_version", "Version of the config being served", multiprocess_mode="livemax",
                      registry=registry),
        build_seconds=Histogram(
            "xds_snapshot_build_seconds",
            "Time to compile and serialize a snapshot",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        ),
        push_seconds=Histogram(
            "xds_push_ack_seconds",
            "From push to the last ACK",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        ),
    )


class MetricsCallbacks(Callbacks):
    def __init__(self, metrics: XdsMetrics | None = None) -> None:
        self._metrics = metrics or service_metrics()
        self._delta: dict[int, bool] = {}

    def stream_opened(self, stream_id: int, node: Node, delta: bool, has_snapshot: bool) -> None:
        self._metrics.streams.labels(protocol="delta" if delta else "sotw").inc()
        self._delta[stream_id] = delta
        if has_snapshot:
            log.info("stream opened", extra={"stream": stream_id, "node": node.id, "delta": delta})
        else:
            log.warning(
                "stream opened for a node with no snapshot; it waits",
                extra={"stream": stream_id, "node": node.id, "cluster": node.cluster},
            )

    def stream_closed(self, stream_id: int, node: Node) -> None:
        delta = self._delta.pop(stream_id, False)
        self._metrics.streams.labels(protocol="delta" if delta else "sotw").dec()
        log.info("stream closed", extra={"stream": stream_id, "node": node.id})

    def request(self, stream_id: int, node: Node, type_url: str) -> None:
        self._metrics.requests.labels(type=_label(type_url)).inc()

    def response(self, stream_id: int, node: Node, response: SotwResponse | DeltaResponse) -> None:
        kind = _label(response.type_url)
        self._metrics.responses.labels(type=kind).inc()
        log.debug(
            "response",
            extra={
                "stream": stream_id,
                "node": node.id,
                "type": kind,
                "nonce": response.nonce,
                "resources": len(response.resources),
            },
        )

    def ack(self, stream_id: int, node: Node, type_url: str, version: str) -> None:
        self._metrics.acks.labels(type=_label(type_url)).inc()

    def nack(self, stream_id: int, node: Node, type_url: str, version: str, error: str) -> None:
        self._metrics.nacks.labels(type=_label(type_url)).inc()
        log.error(
            "config rejected by Envoy",
            extra={
                "stream": stream_id,
                "node": node.id,
                "type": short(type_url),
                "version": version,
                "error": error,
            },
        )

    def stale(self, stream_id: int, node: Node, type_url: str) -> None:
        self._metrics.stale.labels(type=_label(type_url)).inc()


# The metrics in a registry (default: the process's), made by the first call: the service's start.
service_metrics = per_registry(_build)
