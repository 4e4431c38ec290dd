"""A "Service" in front of gateway pods (round robin over the ready ones, as kube-proxy over the endpoints) and a
small constant-rate async load generator through it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from outrider.pod.runner import Pod


@dataclass
class Service:
    """Endpoints = the pods that are ready and not terminating (Kubernetes' EndpointSlice `ready`)."""

    pods: Callable[[], list[Pod]]
    port: int
    _next: int = 0

    def pick(self) -> Pod | None:
        ready = [p for p in self.pods() if p.ready]
        if not ready:
            return None
        self._next += 1
        return ready[self._next % len(ready)]


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    not_sent: int = 0  # no ready endpoint at that moment: the Service had nowhere to send
    errors: Counter[str] = field(default_factory=Counter)
    by_pod: Counter[str] = field(default_factory=Counter)


class LoadGenerator:
    """`rate` requests per second through the Service, from a thread of its own, until stop()."""

    def __init__(self, service: Service, path: str, rate: float = 60.0, concurrency: int = 8) -> None:
        self.service = service
        self.path = path
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
        clients: dict[str, httpx.AsyncClient] = {}  # one keep-alive pool per pod, as a client behind a Service
        in_flight: Counter[str] = Counter()
        queue: asyncio.Queue[float] = asyncio.Queue()

        async def close_removed() -> None:
            """A pod that left the endpoints gets no new requests; once its last one is answered, its idle
            connections are closed, as a load balancer following EndpointSlices drains a removed host's pool."""
            ready = {p.ip for p in self.service.pods() if p.ready}
            for ip in [ip for ip in clients if ip not in ready and in_flight[ip] == 0]:
                await clients.pop(ip).aclose()

        async def one() -> None:
            pod = self.service.pick()
            if pod is None:
                self.result.not_sent += 1
                return
            client = clients.get(pod.ip)
            if client is None:
                client = clients[pod.ip] = httpx.AsyncClient(
                    base_url=f"http://{pod.ip}:{self.service.port}", timeout=5.0, trust_env=False)
            self.result.sent += 1
            in_flight[pod.ip] += 1
            try:
                response = await client.get(self.path)
                if response.status_code == 200:
                    self.result.ok += 1
                    self.result.by_pod[pod.ip] += 1
                else:
                    self.result.failed += 1
                    self.result.errors[f"HTTP {response.status_code}"] += 1
            except httpx.HTTPError as exc:
                self.result.failed += 1
                self.result.errors[type(exc).__name__] += 1
            finally:
                in_flight[pod.ip] -= 1

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
            await close_removed()
            queue.put_nowait(next_at)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.wait_for(queue.join(), 15)  # every request sent gets its answer counted
        for task in workers:
            task.cancel()
        for client in clients.values():
            await client.aclose()
