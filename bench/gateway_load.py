"""Load and accounting for the gateway benchmark: wrk/h2load with an optional body, CPU and peak RSS of a
process together with its descendants (a service's workers are children of the service's pid)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.common import cpu_seconds, h2load_fixed_rate, rss_mib, wrk


def descendants(pid: int) -> list[int]:
    """pid and every live process below it (from the parent pids in /proc/<n>/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(parents.get(current, []))
    return out


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of the given processes; one that is gone counts as 0."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def tree_rss(pids: list[int]) -> float:
    """Sum of the processes' peak RSS (VmHWM), MiB: what the service holds at most across its workers."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += rss_mib(pid)
    return total


@dataclass(frozen=True)
class Load:
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int


def saturate(url: str, headers: dict[str, str], body: str | None, seconds: float, workdir: Path,
             connections: int = 32) -> Load:
    """Closed loop at saturation: wrk, one thread (the box has 2 cores and also runs Envoy and the services)."""
    sat = wrk(url, headers, seconds, connections=connections, body=body, workdir=workdir)
    nan = float("nan")
    return Load(sat.requests, sat.rps, nan, nan, nan, sat.non_2xx + sat.socket_errors)


# h2load connections of an open-loop run, whatever the rate. h2load's --rps timer fires each client at most every
# 10 ms (nghttp2 src/h2load.cc: `rps_watcher.repeat = std::max(0.01, 1. / config.rps)`) and the clients tick in
# step, so N clients are N requests arriving at once: more clients measure bursts, not the gateway (Envoy →
# origin on this box at 1,000 req/s: p50/p99 2.5/5.8 ms with 10 clients, 11/54 ms with 40, 21/92 ms with 160).
# Fewer clients hide more: over HTTP/1.1 a client has one request in flight, and a request due while the
# previous is out waits in h2load, unmeasured. 10 is what every earlier results file used.
CLIENTS = 10


def clients_for(rate: float) -> int:
    """h2load connections for an open-loop run at `rate` req/s in total (the same for every rate, see CLIENTS)."""
    return CLIENTS


def warm_up(url: str, headers: dict[str, str], body: str | None, workdir: Path, requests: int = 320,
            clients: int = 32) -> None:
    """A fixed number of requests on as many connections as the saturation run (h2load -n; a second of wrk
    did the same work in a fixed second): Envoy's connections to every worker, caches, Redis scripts."""
    argv = ["h2load", "--h1", "-t", "1", "-c", str(clients), "-n", str(requests)]
    if body is not None:
        data = workdir / "warm-body.json"
        data.write_text(body)
        argv.append(f"--data={data}")
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    subprocess.run([*argv, url], capture_output=True, text=True, check=True, timeout=60)


def fixed_rate(url: str, headers: dict[str, str], body: str | None, rate: float, seconds: int,
               workdir: Path) -> Load:
    """Open loop at a fixed total rate (h2load --rps per client, HTTP/1.1); percentiles from its log file."""
    fixed = h2load_fixed_rate(url, headers, rate, seconds, clients=clients_for(rate), body=body, workdir=workdir)
    rps = fixed.requests / seconds if fixed.requests >= 2 else 0.0
    return Load(fixed.requests, rps, fixed.p50_ms, fixed.p90_ms, fixed.p99_ms, fixed.non_2xx)
