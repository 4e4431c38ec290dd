"""Soak run (issue 11): mixed valid and hostile traffic from many distinct users; RSS of every process over time.

    .venv/bin/python bench/soak.py [--minutes 10] [--users 100000] [--concurrency 32]

Starts the example gateway (Envoy, control plane, ext_authz, ratelimit on memory, ext_proc, demo upstream)
on free loopback ports and sends, for the given time, a mix of: valid tokens of distinct users (each user
a new subject, so token caches, rate limit counters and per-client tables see new keys all the time),
expired, forged and garbage tokens, anonymous calls to protected routes, hostile paths, oversized and
malformed JSON bodies, and route changes through the admin API. Every 15 s it samples the RSS of every
process; the table shows each process's RSS after warm-up and at the end, and the growth per minute.
RSS is flat when the growth after warm-up stays near zero. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine_summary, print_table
from outrider.devtoken import mint_token
from outrider.supervisor import DEV_ADMIN_TOKEN_FILE
from tests.harness import KEYS_DIR, Stack, example_config_dict, with_free_ports, write_config

HOSTILE_PATHS = ["/api/v1/public/..%2f..%2fadmin", "/api/v1/public/%c0%ae%c0%ae/admin/x",
                 "/api/v1/public/..;/admin/x", "/api/v1/users/%2e%2e/admin", "/" + "a" * 5000]


def current_rss_mib(pid: int) -> float:
    """Resident set size now (VmRSS; bench.common.rss_mib gives the peak, which cannot come down)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Traffic:
    def __init__(self, stack: Stack, users: int) -> None:
        self.stack = stack
        self.users = users
        provider = stack.data["auth"]["providers"][0]
        self.issuer, self.audience = provider["issuer"], provider["audiences"][0]
        # The key parsed once (parsing the PEM per token cost more than signing): ~1 ms of CPU per new user.
        self.key = serialization.load_pem_private_key((KEYS_DIR / "dev-private.pem").read_bytes(), password=None)
        self.kid = json.loads((KEYS_DIR / "jwks.json").read_text())["keys"][0].get("kid")
        self.tokens: dict[int, str] = {}
        self.next_user = itertools.count()
        self.counts: dict[str, int] = {}

    def token(self, user: int, ttl_s: int = 3600) -> str:
        token = self.tokens.get(user)
        if token is None:
            token = mint_token(self.key, issuer=self.issuer, audience=self.audience,  # type: ignore[arg-type]
                               subject=f"soak-{user}", roles=["user"], kid=self.kid,
                               tier=random.choice(["free", "premium", "enterprise"]), ttl_s=ttl_s)
            if len(self.tokens) < 20_000:  # keep some for reuse; most users are new
                self.tokens[user] = token
        return token

    def one(self, hostile_client: bool) -> tuple[str, str, dict[str, str], bytes | None]:
        # Bad tokens come from their own client addresses: the failure budget locks such a client out (429),
        # and the soak is about the service's memory under both kinds of traffic, not about that lockout.
        if hostile_client:
            kind = random.choice(["expired", "forged", "garbage", "anonymous"])
        else:
            kind = random.choices(["valid", "hostile", "body", "public"], weights=[50, 10, 10, 15])[0]
        user = next(self.next_user) % self.users
        headers: dict[str, str] = {}
        method, path, body = "GET", "/api/v1/users/me", None
        if kind == "valid":
            headers["authorization"] = f"Bearer {self.token(user)}"
        elif kind == "expired":
            headers["authorization"] = f"Bearer {self.token(-1, ttl_s=-3600)}"
        elif kind == "forged":
            head, payload, _ = self.token(user).split(".")
            headers["authorization"] = f"Bearer {head}.{payload}.{'A' * 342}"
        elif kind == "garbage":
            headers["authorization"] = "Bearer " + "".join(random.choices("abcXYZ012.-_", k=random.randint(1, 900)))
        elif kind == "hostile":
            path = random.choice(HOSTILE_PATHS)
        elif kind == "body":
            method, path = "POST", "/api/v1/messages/1"
            headers["authorization"] = f"Bearer {self.token(user)}"
            headers["content-type"] = "application/json"
            body = random.choice([b'{"request": {"userId": "\\ud800"}}', b"{" * 5000, b'{"a": 1e999999}',
                                  b'{"request": {"userId": "u"}, "pad": "' + b"x" * 200_000 + b'"}'])
        else:
            path = f"/api/v1/public/item/{user}"
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return method, path, headers, body


async def drive(traffic: Traffic, seconds: float, concurrency: int, statuses: dict[int, int]) -> None:
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=10)

    async def worker(index: int) -> None:
        # Each worker is a client address of its own in 127.0.0.0/8 (per-IP limits and budgets key on it);
        # one in four sends only bad tokens.
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.{index // 250}.{index % 250 + 2}", 0))
        async with aiohttp.ClientSession(base_url=traffic.stack.url, timeout=timeout, connector=connector) as session:
            while time.monotonic() < deadline:
                method, path, headers, body = traffic.one(hostile_client=index % 4 == 3)
                try:
                    async with session.request(method, path, headers=headers, data=body) as response:
                        await response.read()
                        statuses[response.status] = statuses.get(response.status, 0) + 1
                except (aiohttp.ClientError, TimeoutError):
                    statuses[0] = statuses.get(0, 0) + 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def change_routes(stack: Stack, seconds: float) -> int:
    token = (stack.workdir / DEV_ADMIN_TOKEN_FILE).read_text().strip()
    port = stack.data["services"]["xds"]["admin_port"]
    deadline, changes = time.monotonic() + seconds, 0
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}) as s:
        while time.monotonic() < deadline:
            body = {"match": {"prefix": "/soak/"}, "upstream": "demo", "public": True,
                    "transformations": {"request": {"add_headers": {"X-Soak": str(changes)}}}}
            async with s.put("/v1/routes/soak", json=body) as response:
                await response.read()
            changes += 1
            await asyncio.sleep(5)
    return changes


def processes(stack: Stack) -> dict[str, int]:
    from tests.harness import child_pids

    out = {}
    for name, proc in stack.procs.items():
        if proc.proc is not None:
            out[name] = proc.proc.pid
            for i, pid in enumerate(sorted(child_pids(proc.proc.pid))):
                out[f"{name}/worker{i}"] = pid
    return out


async def soak(stack: Stack, minutes: float, users: int, concurrency: int) -> list[list[str]]:
    traffic = Traffic(stack, users)
    statuses: dict[int, int] = {}
    samples: dict[str, list[tuple[float, float]]] = {}
    started = time.monotonic()
    seconds = minutes * 60

    async def sampler() -> None:
        while time.monotonic() - started < seconds:
            now = time.monotonic() - started
            for name, pid in processes(stack).items():
                with contextlib.suppress(OSError):  # a process restarting between listing and reading
                    samples.setdefault(name, []).append((now, current_rss_mib(pid)))
            print(f"  t={now:5.0f}s requests={sum(statuses.values())} statuses={dict(sorted(statuses.items()))}",
                  file=sys.stderr, flush=True)
            await asyncio.sleep(15)

    changes = (await asyncio.gather(drive(traffic, seconds, concurrency, statuses), change_routes(stack, seconds),
                                    sampler()))[1]
    warm = min(60.0, seconds / 3)
    rows = []
    for name, points in sorted(samples.items()):
        after = [(t, r) for t, r in points if t >= warm]
        if len(after) < 2:
            continue
        slope = statistics.linear_regression([t for t, _ in after], [r for _, r in after]).slope * 60
        rows.append([name, f"{after[0][1]:.1f}", f"{after[-1][1]:.1f}", f"{max(r for _, r in after):.1f}",
                     f"{slope:+.2f}"])
    total = sum(statuses.values())
    print(f"\n{total} requests in {seconds:.0f} s ({total / seconds:.0f}/s), {changes} route changes, "
          f"{len(traffic.tokens)} tokens cached by the client, kinds {traffic.counts}, statuses "
          f"{dict(sorted(statuses.items()))}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    data = with_free_ports(example_config_dict())
    data["logging"] = {"level": "warning", "decisions": False}
    # Many users share few client addresses here: per-IP limits as for a busy NAT, tiers as configured.
    data["rate_limits"]["per_ip"] = {"requests_per_unit": 100_000, "unit": "second", "burst": 100_000}
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    stack = Stack(write_config(data, workdir / "gateway.yaml"), data, workdir)
    stack.start()
    try:
        rows = asyncio.run(soak(stack, args.minutes, args.users, args.concurrency))
    finally:
        stack.stop()
    print_table(f"Soak: RSS (MiB) after warm-up and at the end — {machine_summary()}",
                ["process", "after warm-up", "end", "max", "MiB/min after warm-up"], rows)


if __name__ == "__main__":
    main()
