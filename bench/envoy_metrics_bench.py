"""Scrape cost of the design's gateway metrics (outrider/envoy_metrics.py): ms per collect, per /metrics.

Starts the example stack (plus --upstreams extra upstreams and routes, each with traffic, since Envoy's
stats grow with clusters), then times: Envoy's filtered /stats/prometheus alone, the collector's whole
collect (fetch + parse + map), and a full scrape of ext_authz's /metrics (its own metrics + the collector).

    .venv/bin/python bench/envoy_metrics_bench.py [--upstreams 100] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outrider.envoy_metrics import STATS_PATH, EnvoyStatsCollector
from tests.conftest import start_stack
from tests.harness import example_config_dict


def config(upstreams: int) -> dict:  # type: ignore[type-arg]
    data = example_config_dict()
    data["upstreams"] += [{"name": f"u{i}", "endpoints": [{"address": "127.0.0.1", "port": 18080}]}
                          for i in range(upstreams)]
    data["routes"] = [{"name": f"r{i}", "match": {"prefix": f"/bench/u{i}/"}, "upstream": f"u{i}", "public": True}
                      for i in range(upstreams)] + data["routes"]
    return data


def timed(call: Callable[[], object], scrapes: int) -> tuple[float, float]:
    call()  # warm: connections, caches
    samples = []
    for _ in range(scrapes):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstreams", type=int, default=0)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        stack = start_stack(Path(workdir), config(args.upstreams))
        try:
            with stack.client() as client:
                for i in range(args.upstreams):
                    client.get(f"/bench/u{i}/x")
                for _ in range(20):
                    client.get("/api/v1/public/x")
            collector = EnvoyStatsCollector(stack.admin_url)
            metrics_url = f"http://127.0.0.1:{stack.data['services']['ext_authz']['metrics_port']}/metrics"
            with httpx.Client(timeout=5) as http:
                rows = [
                    ("Envoy /stats/prometheus (filtered)", timed(lambda: http.get(stack.admin_url + STATS_PATH),
                                                                 args.scrapes)),
                    ("collector.collect() (fetch + parse + map)", timed(lambda: list(collector.collect()),
                                                                        args.scrapes)),
                    ("ext_authz /metrics over HTTP (all of it)", timed(lambda: http.get(metrics_url), args.scrapes)),
                ]
                size = len(http.get(stack.admin_url + STATS_PATH).content)
        finally:
            stack.stop()
    print(f"clusters: {args.upstreams + 1} upstream(s) + the services'; filtered stats: {size} bytes")
    print(f"{'what':45} {'median ms':>10} {'p95 ms':>8}")
    for what, (median, p95) in rows:
        print(f"{what:45} {median:10.2f} {p95:8.2f}")


if __name__ == "__main__":
    main()
