"""Load and accounting for the gateway benchmark: wrk/h2load with an optional body, CPU and peak RSS of a
process together with its descendants (a service's workers are children of the service's pid)."""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.common import cpu_seconds, rss_mib


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


def _wrk_script(workdir: Path, body: str | None) -> list[str]:
    if body is None:
        return []
    script = workdir / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = [[{body}]]\n')  # a Lua long string: no escaping
    return ["-s", str(script)]


def saturate(url: str, headers: dict[str, str], body: str | None, seconds: float, workdir: Path,
             connections: int = 32) -> Load:
    """Closed loop at saturation: wrk, one thread (the box has 2 cores and also runs Envoy and the services)."""
    argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", *_wrk_script(workdir, body)]
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = sum(int(g) for g in errors.groups()) if errors else 0
    nan = float("nan")
    return Load(requests, rps, nan, nan, nan, (int(bad.group(1)) if bad else 0) + failed)


def fixed_rate(url: str, headers: dict[str, str], body: str | None, rate: int, seconds: int, workdir: Path,
               clients: int = 10) -> Load:
    """Open loop at a fixed total rate (h2load --rps per client, HTTP/1.1); percentiles from its log file."""
    with tempfile.NamedTemporaryFile(suffix=".log", dir=workdir) as log:
        argv = ["h2load", "--h1", "-t", "1", "-c", str(clients), f"--rps={rate / clients:g}", "-D", str(seconds),
                f"--log-file={log.name}"]
        if body is not None:
            data = workdir / "body.json"
            data.write_text(body)
            argv.append(f"--data={data}")
        for key, value in headers.items():
            argv += ["-H", f"{key}: {value}"]
        subprocess.run([*argv, url], capture_output=True, text=True, check=True, timeout=seconds + 60)
        rows = [line.split("\t") for line in Path(log.name).read_text().splitlines() if line.strip()]
    durations = sorted(int(r[2]) / 1000 for r in rows)
    non_2xx = sum(1 for r in rows if not r[1].startswith("2"))
    if len(durations) < 2:
        nan = float("nan")
        return Load(len(durations), 0.0, nan, nan, nan, non_2xx)
    q = statistics.quantiles(durations, n=100, method="inclusive")
    return Load(len(durations), len(durations) / seconds, q[49], q[89], q[98], non_2xx)
