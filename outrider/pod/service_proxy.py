"""kube-proxy's userspace mode: a TCP listener per Service port on its cluster IP, piping to a ready endpoint.

The endpoints are read when a connection arrives (a pod that turned unready or stopped gets no new
connection); a connection already piped to a pod stays there until one side closes it, as with kube-proxy.
Runs an asyncio loop on a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable

from outrider.pod.endpoints import Endpoint, RoundRobin

CONNECT_TIMEOUT_S = 2.0
BUFFER = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close (an HTTP/1.1 client may still read); a reset aborts the other side too."""
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()
        other.transport.abort()


class ServiceProxy:
    """Listeners added with `listen`; `endpoints(key)` gives the ready endpoints of a Service port right now."""

    def __init__(self, endpoints: Callable[[str], list[Endpoint]]) -> None:
        self._endpoints = endpoints
        self._pickers: dict[str, RoundRobin] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self.connections: Counter[tuple[str, str]] = Counter()  # (Service port key, pod) → connections sent
        self.rejected: Counter[str] = Counter()  # no endpoint would take it
        self._open: set[asyncio.StreamWriter] = set()
        self.lags: list[tuple[float, float]] = []  # (when, how late): the loop ran late by more than 0.2 s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="service-proxy", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._watch_lag(), self._loop)

    async def _watch_lag(self) -> None:
        """Records when this loop could not run on time (a busy host process holding the GIL, a starved
        machine): new connections wait in the listen backlog meanwhile."""
        while True:
            before = self._loop.time()
            await asyncio.sleep(0.1)
            late = self._loop.time() - before - 0.1
            if late > 0.2:
                self.lags.append((time.monotonic(), late))

    def listen(self, key: str, address: str, port: int) -> None:
        """Accept on address:port; `key` (say "outrider-gateway:8080") names the Service port to `endpoints`."""
        self._pickers[key] = RoundRobin()

        async def start() -> asyncio.base_events.Server:
            return await asyncio.start_server(lambda r, w: self._forward(key, r, w), address, port,
                                              reuse_address=True)

        self._servers.append(asyncio.run_coroutine_threadsafe(start(), self._loop).result(10))

    async def _forward(self, key: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for endpoint in self._pickers[key].order(self._endpoints(key)):
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                upstream = await asyncio.wait_for(asyncio.open_connection(endpoint.ip, endpoint.port),
                                                  CONNECT_TIMEOUT_S)
                self.connections[(key, endpoint.pod)] += 1
                break
        if upstream is None:
            self.rejected[key] += 1  # no ready endpoint: the client sees its connection closed
            writer.transport.abort()
            return
        up_reader, up_writer = upstream
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer, writer), _pipe(up_reader, writer, up_writer))
        finally:
            for w in (writer, up_writer):
                self._open.discard(w)
                w.close()

    def close(self) -> None:
        async def stop() -> None:
            for task in asyncio.all_tasks():
                if task.get_coro().__name__ == "_watch_lag":  # type: ignore[union-attr]
                    task.cancel()
            for server in self._servers:
                server.close()
            for writer in list(self._open):
                writer.transport.abort()  # the pipes see a reset and end (cancelling them would log noise)
            for _ in range(40):
                if not self._open:
                    break
                await asyncio.sleep(0.05)

        if self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._servers.clear()
