"""A small constant-rate async load generator through a Service's cluster IP (the harness's kube-proxy picks the
pod), counting what was sent, answered and lost."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    not_sent: int = 0  # the Service had no ready endpoint at that moment: nowhere to send
    errors: Counter[str] = field(default_factory=Counter)
    started_at: float = field(default_factory=time.monotonic)

    def snapshot(self) -> tuple[int, int, int]:
        return self.sent, self.ok, self.failed


class LoadGenerator:
    """`rate` GETs per second of `url` + `path` from a thread of its own, until stop(); a request is only sent
    while `has_endpoints()` (a client of a Service with no endpoint gets refused; that is not a lost request)."""

    def __init__(self, url: str, path: str, has_endpoints: Callable[[], bool], rate: float = 60.0,
                 concurrency: int = 8) -> None:
        self.url = url
        self.path = path
        self.has_endpoints = has_endpoints
        self.rate = rate
        self.concurrency = concurrency
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="loadgen", daemon=True)

    def start(self) -> LoadGenerator:
        self._thread.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join(30)
        return self.result

    async def _main(self) -> None:
        queue: asyncio.Queue[float] = asyncio.Queue()
        # One keep-alive pool, as a client of a Service has: each connection stays with the pod the proxy
        # gave it, until the pod's Envoy closes it (a drain answers with `connection: close`).
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0, trust_env=False) as client:

            async def one() -> None:
                if not self.has_endpoints():
                    self.result.not_sent += 1
                    return
                self.result.sent += 1
                try:
                    response = await client.get(self.path)
                    if response.status_code == 200:
                        self.result.ok += 1
                    else:
                        self.result.failed += 1
                        # The body's start says who refused (Envoy's "no healthy upstream", an ext_authz denial...).
                        self.result.errors[f"HTTP {response.status_code} {response.text[:60]!r}"] += 1
                except httpx.HTTPError as exc:
                    self.result.failed += 1
                    self.result.errors[type(exc).__name__] += 1

            async def worker() -> None:
                while True:
                    await queue.get()
                    try:
                        await one()
                    finally:
                        queue.task_done()

            workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
            interval = 1.0 / self.rate
            next_at = time.monotonic()
            while not self._stop.is_set():
                queue.put_nowait(next_at)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.wait_for(queue.join(), 15)  # every request sent gets its answer counted
            for task in workers:
                task.cancel()
