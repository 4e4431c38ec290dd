"""N worker processes of one service sharing its gRPC port (SO_REUSEPORT), forked before gRPC starts.

`python -m <service>` calls `launch()`. With one worker the service runs in this process. With more,
this process forks the workers before anything imports gRPC or creates a metric, then only
supervises them: it forwards SIGTERM/SIGINT, restarts a worker that dies, and serves the workers'
aggregated Prometheus metrics (prometheus_client's multiprocess mode) on the service's metrics port.

That port is also the service's readiness (`outrider run` polls it), so it opens only once gRPC is bound:
a single process opens it from `notify_bound()`, the parent once every worker has said so through a pipe.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from outrider.config import ConfigError, load_config
from outrider.lifetime import die_with_parent

REUSE_PORT_ENV = "OUTRIDER_REUSE_PORT"
WORKER_ENV = "OUTRIDER_WORKER_INDEX"
READY_FD_ENV = "OUTRIDER_READY_FD"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
RESTART_DELAY_S = 0.5
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def reuse_port_enabled() -> bool:
    return os.environ.get(REUSE_PORT_ENV) == "1"


def metrics_served_by_parent() -> bool:
    """True in a worker of a multi-worker service: the parent serves /metrics for all of them."""
    return WORKER_ENV in os.environ


class _BoundSignal:
    """What waits for this process's gRPC port to be bound (its metrics endpoint: the readiness probe)."""

    def __init__(self) -> None:
        self.bound = False
        self.waiting: list[Callable[[], object]] = []


_BOUND = _BoundSignal()


def when_bound(callback: Callable[[], object]) -> None:
    """Run `callback` once this process's gRPC port is bound (at once if it already is)."""
    if _BOUND.bound:
        callback()
    else:
        _BOUND.waiting.append(callback)


def notify_bound() -> None:
    """The gRPC port is bound (grpc_runtime.serve): run what waited for it, and tell a supervising parent."""
    _BOUND.bound = True
    waiting, _BOUND.waiting = _BOUND.waiting, []
    for callback in waiting:
        callback()
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    # One short line per worker: a pipe write under PIPE_BUF bytes is atomic, so lines never interleave.
    os.write(int(fd), f"{os.getpid()}\n".encode())
    os.close(int(fd))


def _entry(target: str) -> Callable[[list[str]], None]:
    module_name, _, function = target.partition(":")
    entry: Callable[[list[str]], None] = getattr(importlib.import_module(module_name), function)
    return entry


def _fork_worker(index: int, target: str, argv: list[str], ready_pipe: tuple[int, int],
                 mask: set[int | signal.Signals]) -> int:
    """Fork a worker (called with STOP_SIGNALS blocked; `mask` is the signal mask to restore in it)."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker: a fresh service process in all but name
        die_with_parent(parent)  # a parent killed hard must not leave workers holding the port
        # The parent's handlers are no business of a worker: reset them before a stop signal can arrive.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(ready_pipe[0])
        os.environ[WORKER_ENV] = str(index)
        os.environ[READY_FD_ENV] = str(ready_pipe[1])
        code = 0
        try:
            _entry(target)(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return pid


def _serve_aggregated_metrics(address: str, port: int, envoy_admin: str | None = None) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    from outrider.envoy_metrics import serve_envoy_metrics

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    if envoy_admin:  # --envoy-admin: the gateway's metrics read from Envoy, here rather than in a worker
        serve_envoy_metrics(envoy_admin, registry)
    start_http_server(port, addr=address, registry=registry)


class _Workers:
    """The parent's view of its workers: which are alive, which have bound their port, which wait to restart."""

    def __init__(self, target: str, argv: list[str], ready_pipe: tuple[int, int]) -> None:
        self._target = target
        self._argv = argv
        self._ready_pipe = ready_pipe
        self.pids: dict[int, int] = {}  # pid → worker index
        self.bound: set[int] = set()  # pids that said their gRPC port is bound
        self.restart_at: dict[int, float] = {}  # worker index → when to fork it again

    def fork(self, index: int) -> None:
        # Stop signals wait until the new pid is known here (so a SIGTERM reaches it) and, in the child,
        # until it has dropped this process's handlers.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.pids[_fork_worker(index, self._target, self._argv, self._ready_pipe, mask)] = index
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    @property
    def all_bound(self) -> bool:
        return not self.restart_at and set(self.pids) <= self.bound

    def signal_all(self, sig: int) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                # A stopped worker (a debugger, SIGSTOP) would never act on SIGTERM: let it run to exit.
                os.kill(pid, signal.SIGCONT)


def _read_bound(read_fd: int, workers: _Workers, timeout_s: float) -> None:
    """Wait up to timeout_s for workers' "bound" lines; note the pids that are still ours."""
    readable, _, _ = select.select([read_fd], [], [], timeout_s)
    if not readable:
        return
    for line in os.read(read_fd, 65536).decode().split():
        pid = int(line)
        if pid in workers.pids:  # a line from a worker that has died since is stale
            workers.bound.add(pid)


def _supervise(count: int, target: str, argv: list[str], address: str, metrics_port: int,
               envoy_admin: str | None = None) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="outrider-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    # prometheus_client picks its value store when it is first imported, and finding the service plugins
    # (to read the config) may have imported it already: pick again now that the variable is set, so the
    # workers' metrics go to files the parent can sum. No metric exists yet (none is made at import).
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    os.environ[REUSE_PORT_ENV] = "1"
    read_fd, write_fd = os.pipe()  # both ends stay open here: a restarted worker inherits the write end too
    workers = _Workers(target, argv, (read_fd, write_fd))
    stopping = False
    serving = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        workers.restart_at.clear()
        workers.signal_all(signal.SIGTERM)

    # Handlers first: a SIGTERM during the forks must reach every worker, not kill this process alone.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for first in range(count):
        workers.fork(first)
    from prometheus_client import multiprocess

    code = 0
    try:
        while workers.pids or workers.restart_at:
            _read_bound(read_fd, workers, 0.1)
            if not serving and not stopping and workers.all_bound:
                # Ready: every worker accepts calls, so the readiness endpoint may answer now.
                _serve_aggregated_metrics(address, metrics_port, envoy_admin)
                serving = True
            while workers.pids:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                index = workers.pids.pop(pid, None)
                workers.bound.discard(pid)
                if index is None:
                    continue
                multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
                exit_code = os.waitstatus_to_exitcode(status)
                if stopping:
                    if exit_code != 0:
                        code = exit_code
                elif not serving:
                    # A worker that dies before the service was ever ready is a failed start, as with one
                    # worker: stop the others and exit rather than retry a broken config or a taken port.
                    print(f"worker {index} (pid {pid}) exited with {exit_code} before the service was ready",
                          file=sys.stderr, flush=True)
                    code = exit_code or 1
                    stop()
                else:
                    # A crashed worker is replaced; its siblings keep serving on the shared port meanwhile.
                    print(f"worker {index} (pid {pid}) exited with {exit_code}; restarting", file=sys.stderr,
                          flush=True)
                    workers.restart_at[index] = time.monotonic() + RESTART_DELAY_S
            now = time.monotonic()
            for index, when in list(workers.restart_at.items()):
                if now >= when and not stopping:
                    del workers.restart_at[index]
                    workers.fork(index)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


def launch(section: str, target: str, argv: list[str] | None = None) -> None:
    """Run `target` ("module:function", taking argv) as services.<section>.workers processes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    # Control-plane mode has no file: the count and the /metrics endpoint come from flags.
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--envoy-admin")
    known, _ = parser.parse_known_args(argv)
    workers, address, metrics_port = known.workers, known.address, known.metrics_port
    if known.config:
        try:
            config = load_config(known.config)
        except ConfigError as exc:
            raise SystemExit(str(exc)) from None
        service = getattr(config.services, section)
        workers = getattr(service, "workers", 1)
        address, metrics_port = service.address, service.metrics_port
    if workers <= 1 or metrics_port is None:
        _entry(target)(argv)
        return
    sys.exit(_supervise(workers, target, argv, address, metrics_port, known.envoy_admin))
