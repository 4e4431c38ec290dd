"""Benchmark plumbing: load generators (wrk, h2load), per-process CPU from /proc, latency percentiles."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # peak resident set size
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass(frozen=True)
class Saturation:
    requests: int
    rps: float
    non_2xx: int
    socket_errors: int = 0


def _wrk_body_script(workdir: Path, body: str) -> list[str]:
    script = workdir / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = [[{body}]]\n')  # a Lua long string: no escaping
    return ["-s", str(script)]


def wrk(url: str, headers: dict[str, str], seconds: float, connections: int = 32, threads: int = 1,
        body: str | None = None, workdir: Path | None = None) -> Saturation:
    """Closed-loop load at saturation with wrk; with a body, POSTs it (the Lua script goes into workdir)."""
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--latency"]
    if body is not None:
        argv += _wrk_body_script(workdir or Path(tempfile.mkdtemp()), body)
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Saturation(requests, rps, int(bad.group(1)) if bad else 0,
                      sum(int(g) for g in errors.groups()) if errors else 0)


@dataclass(frozen=True)
class FixedRate:
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int


def h2load_fixed_rate(url: str, headers: dict[str, str], rate: float, seconds: int, clients: int = 10,
                      body: str | None = None, workdir: Path | None = None) -> FixedRate:
    """Open-loop load at a fixed total rate (h2load --rps per client, HTTP/1.1), latencies from its log file.

    With a body, each request POSTs it (the data file goes into workdir).
    """
    with tempfile.NamedTemporaryFile(suffix=".log", dir=workdir) as log:
        argv = ["h2load", "--h1", "-t", "1", "-c", str(clients), f"--rps={rate / clients:g}", "-D", str(seconds),
                f"--log-file={log.name}"]
        if body is not None:
            data = (workdir or Path(tempfile.mkdtemp())) / "body.json"
            data.write_text(body)
            argv.append(f"--data={data}")
        for key, value in headers.items():
            argv += ["-H", f"{key}: {value}"]
        subprocess.run([*argv, url], capture_output=True, text=True, check=True, timeout=seconds + 60)
        rows = [line.split("\t") for line in Path(log.name).read_text().splitlines() if line.strip()]
    durations = sorted(int(r[2]) / 1000 for r in rows)
    non_2xx = sum(1 for r in rows if not r[1].startswith("2"))
    if len(durations) < 2:  # statistics.quantiles needs two points
        nan = float("nan")
        return FixedRate(len(durations), nan, nan, nan, non_2xx)
    q = statistics.quantiles(durations, n=100, method="inclusive")
    return FixedRate(len(durations), q[49], q[89], q[98], non_2xx)


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [f"## {title}", "",
             "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def tool_version(argv: list[str], pattern: str) -> str:
    """The first group of `pattern` in what `argv` (e.g. `envoy --version`) prints, or "?"."""
    try:
        text = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10).stdout
    except OSError:
        return "?"
    found = re.search(pattern, text)
    return found.group(1) if found else "?"


def machine_summary() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return f"{os.cpu_count()} cores, {cpu}"
