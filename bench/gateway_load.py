"""Load and accounting for the gateway benchmark: wrk/h2load with an optional body, CPU and peak RSS of a
process together with its descendants (a service's workers are children of the service's pid)."""

from __future__ import annotations

import contextlib
import math
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


# Requests per second one h2load client is given at most. Over HTTP/1.1 a client has one request in flight:
# when an answer takes longer than the client's interval, the next request waits inside h2load and its wait
# is not in the percentiles (coordinated omission). 25/s leaves 40 ms per request, above every p99 measured
# at half capacity; the same rate always gets the same clients, so a scenario and its baseline compare.
PER_CLIENT_RPS = 25
MIN_CLIENTS, MAX_CLIENTS = 10, 256


def clients_for(rate: float) -> int:
    """h2load connections for an open-loop run at `rate` req/s in total."""
    return max(MIN_CLIENTS, min(MAX_CLIENTS, math.ceil(rate / PER_CLIENT_RPS)))


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
