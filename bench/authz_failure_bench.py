"""ext_authz CPU per Check for refused tokens, before and after the negative cache and the failure budget.

Two variants of the example config: "before" (negative_cache_entries: 0, failure_budget off: every refused
token costs a full RS256 verification) and "after" (the defaults). The same Check calls go to each: valid
tokens (one cached; all distinct), forged signatures (one token replayed; all distinct from one client;
all distinct, a client each). Two tables, each with the ratio to the distinct-valid-token path of the same
variant and what the clients got:
  1. the service's own CPU per Check: the servicer's Check called in this process (no gRPC, decision lines
     written to /dev/null), process CPU time, medians of interleaved rounds;
  2. end to end: the service as a process, Check over gRPC straight at it (no Envoy), its CPU from /proc —
     this includes the Python gRPC floor (~310 µs per call on the project machine, bench/RESULTS.md).
Run: .venv/bin/python bench/authz_failure_bench.py [--calls 3000] [--rounds 5] [--no-grpc]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, machine_summary, print_table
from ext_authz.plugin import PLUGIN
from outrider.devtoken import mint_dev_token
from outrider.process import ManagedProcess, free_port, grpc_serving

KEYS = ROOT / "examples" / "keys"
IN_FLIGHT = 16


def config(workdir: Path, name: str, hardened: bool) -> tuple[Path, int, dict[str, Any]]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "gateway.yaml").read_text())
    port = free_port()
    data["services"] = {"ext_authz": {"port": port, "metrics_port": free_port()},
                        "demo_upstream": {"enabled": False}, "xds": {"enabled": False}}
    for key in list(data):
        if key not in ("listeners", "admin", "services", "upstreams", "routes", "auth", "rbac", "logging"):
            data.pop(key)
    data["routes"] = [{k: v for k, v in r.items() if not k.startswith(("rate", "transform", "cache", "validation"))}
                      for r in data["routes"]]
    data["auth"]["providers"][0]["jwks_file"] = str(KEYS / "jwks.json")
    data["logging"] = {"level": "warning"}  # decision lines on (the default): a flood writes them too
    if not hardened:
        data["auth"]["negative_cache_entries"] = 0
        data["auth"]["failure_budget"] = {"enabled": False}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, port, data


def check_request(token: str, client: str) -> external_auth_pb2.CheckRequest:
    """What Envoy sends for a GET on a protected route (headers as in bench/authz_bench.py)."""
    request = external_auth_pb2.CheckRequest()
    request.attributes.source.address.socket_address.address = client
    http = request.attributes.request.http
    http.method, http.path, http.id, http.host, http.protocol = "GET", "/api/v1/users/profile", "1", "gw", "HTTP/1.1"
    for key, value in {":authority": "gw", ":path": "/api/v1/users/profile", ":method": "GET", ":scheme": "http",
                       "authorization": f"Bearer {token}", "x-request-id": "1", "x-forwarded-proto": "http",
                       "user-agent": "bench", "x-envoy-external-address": client}.items():
        http.headers[key] = value
    request.attributes.context_extensions["resource"] = "profile"
    return request


def forged(token: str, i: int) -> str:
    """The token with another signature of the same length: costs a full RS256 verification to refuse."""
    head, body, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[:8] = i.to_bytes(8, "big")
    return f"{head}.{body}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def scenarios(calls: int, issuer: str, audience: str) -> dict[str, list[external_auth_pb2.CheckRequest]]:
    def mint(i: int) -> str:
        return mint_dev_token(KEYS, issuer, audience, subject=f"user-{i}", roles=["user"], tier="free", ttl_s=3600)

    valid = [mint(i) for i in range(calls)]
    one = valid[0]
    return {
        "valid token, cached": [check_request(one, "203.0.113.1") for _ in range(calls)],
        "valid tokens, all distinct": [check_request(t, "203.0.113.2") for t in valid],
        "forged signature, one token replayed": [check_request(forged(one, 1), "203.0.113.3") for _ in range(calls)],
        "forged signatures, distinct, one client": [check_request(forged(one, i), "203.0.113.4")
                                                    for i in range(calls)],
        "forged signatures, distinct, a client each": [
            check_request(forged(one, i), f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") for i in range(calls)],
    }


async def drive(port: int, requests: list[external_auth_pb2.CheckRequest]) -> Counter[int]:
    """Send every Check, IN_FLIGHT at a time; count the HTTP statuses answered."""
    statuses: Counter[int] = Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        queue = iter(requests)

        async def worker() -> None:
            for request in queue:
                response = await stub.Check(request, timeout=10)
                statuses[response.denied_response.status.code if response.HasField("denied_response") else 200] += 1

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return statuses


def measure(pid: int, port: int, requests: list[external_auth_pb2.CheckRequest]) -> tuple[float, Counter[int]]:
    cpu0 = cpu_seconds(pid)
    statuses = asyncio.run(drive(port, requests))
    return (cpu_seconds(pid) - cpu0) / len(requests) * 1e6, statuses


Results = tuple[dict[tuple[str, str], list[float]], dict[tuple[str, str], Counter[int]]]


async def in_process(variants: dict[str, tuple[Path, int, dict[str, Any]]],
                     plans: dict[str, list[external_auth_pb2.CheckRequest]], rounds: int) -> Results:
    """The servicer's Check called directly: the service's own CPU, without gRPC."""
    from ext_authz.resource import build_policy
    from ext_authz.service import AuthorizationService
    from outrider.config import load_config
    from outrider.logs import DecisionLog
    from outrider.service_main import cancel_tasks

    cpu: dict[tuple[str, str], list[float]] = {}
    got: dict[tuple[str, str], Counter[int]] = {}
    with open(os.devnull, "w") as devnull:  # noqa: ASYNC230 - /dev/null, before any timing
        for _ in range(rounds):
            for name, (path, _port, _data) in variants.items():
                policy = await build_policy(PLUGIN.payload(load_config(path)))  # fresh caches and budget
                service = AuthorizationService(policy.authorizer, DecisionLog("ext_authz", stream=devnull))
                try:
                    for request in plans["valid token, cached"][:200]:  # warm up
                        await service.Check(request, None)  # type: ignore[arg-type]
                    for scenario, requests in plans.items():
                        statuses: Counter[int] = Counter()
                        started = time.process_time()
                        for request in requests:
                            response = await service.Check(request, None)  # type: ignore[arg-type]
                            statuses[response.denied_response.status.code
                                     if response.HasField("denied_response") else 200] += 1
                        cpu.setdefault((name, scenario), []).append(
                            (time.process_time() - started) / len(requests) * 1e6)
                        got[(name, scenario)] = statuses
                finally:
                    await cancel_tasks(policy.tasks)
    return cpu, got


def over_grpc(variants: dict[str, tuple[Path, int, dict[str, Any]]],
              plans: dict[str, list[external_auth_pb2.CheckRequest]], rounds: int, workdir: Path) -> Results:
    cpu: dict[tuple[str, str], list[float]] = {}
    got: dict[tuple[str, str], Counter[int]] = {}
    for _ in range(rounds):
        for name, (path, port, _data) in variants.items():
            # A fresh process per variant and round: no budget or cache carried from the previous one.
            proc = ManagedProcess(name, [sys.executable, "-m", "ext_authz", "--config", str(path)],
                                  log_path=workdir / f"{name}.log", cwd=ROOT,
                                  ready=grpc_serving("127.0.0.1", port)).start().wait_ready(30)
            assert proc.proc is not None
            try:
                measure(proc.proc.pid, port, plans["valid token, cached"][:200])  # warm up: connection, caches
                for scenario, requests in plans.items():
                    per_check, statuses = measure(proc.proc.pid, port, requests)
                    cpu.setdefault((name, scenario), []).append(per_check)
                    got[(name, scenario)] = statuses
            finally:
                proc.stop()
    return cpu, got


def table(title: str, results: Results, plans: dict[str, Any]) -> None:
    cpu, got = results

    def med(name: str, scenario: str) -> float:
        return statistics.median(cpu[(name, scenario)])

    def answers(counts: Counter[int]) -> str:
        return ", ".join(f"{count}×{status}" for status, count in sorted(counts.items()))

    reference = "valid tokens, all distinct"
    rows = []
    for scenario in plans:
        before, after = med("before", scenario), med("after", scenario)
        rows.append([scenario,
                     f"{before:.1f} ({before / med('before', reference):.2f}×)", answers(got[("before", scenario)]),
                     f"{after:.1f} ({after / med('after', reference):.2f}×)", answers(got[("after", scenario)]),
                     f"{after / before:.2f}"])
    print_table(title, ["scenario", "before µs/check (× valid)", "before answers", "after µs/check (× valid)",
                        "after answers", "after/before"], rows)
    print()


def run(calls: int, rounds: int, grpc_too: bool) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="authz-failure-bench-"))
    variants = {name: config(workdir, name, hardened) for name, hardened in (("before", False), ("after", True))}
    provider = variants["after"][2]["auth"]["providers"][0]
    print(f"minting {calls} tokens...", flush=True)
    plans = scenarios(calls, provider["issuer"], provider["audiences"][0])
    print(f"\nmachine: {machine_summary()}; date: {datetime.date.today()}; {calls} Check calls per scenario; "
          f"medians of {rounds} interleaved rounds, fresh caches and budget per variant and round. before = "
          "negative_cache_entries 0 and failure_budget off; after = the defaults (negative cache 10,000 × 60 s, "
          "20 refusals per client then 2/s). Decision lines on (the default).\n")
    own = asyncio.run(in_process(variants, plans, rounds))
    table("1. ext_authz's own CPU per Check (in process, no gRPC; µs)", own, plans)
    if grpc_too:
        table(f"2. end to end: service process CPU per Check over gRPC ({IN_FLIGHT} in flight, no Envoy; µs, "
              "includes the gRPC floor)", over_grpc(variants, plans, rounds, workdir), plans)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-grpc", dest="grpc", action="store_false", help="only the in-process table")
    args = parser.parse_args()
    run(args.calls, args.rounds, args.grpc)


if __name__ == "__main__":
    main()
