"""N worker processes of one service sharing its gRPC port (SO_REUSEPORT), forked before gRPC starts.

`python -m <service>` calls `launch()`. With one worker the service runs in this process. With more,
this process forks the workers before anything imports gRPC or creates a metric, then only
supervises them: it forwards SIGTERM/SIGINT, restarts a worker that dies, and serves the workers'
aggregated Prometheus metrics (prometheus_client's multiprocess mode) on the service's metrics port.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from outrider.config import ConfigError, load_config

REUSE_PORT_ENV = "OUTRIDER_REUSE_PORT"
WORKER_ENV = "OUTRIDER_WORKER_INDEX"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def reuse_port_enabled() -> bool:
    return os.environ.get(REUSE_PORT_ENV) == "1"


def metrics_served_by_parent() -> bool:
    """True in a worker of a multi-worker service: the parent serves /metrics for all of them."""
    return WORKER_ENV in os.environ


def _entry(target: str) -> Callable[[list[str]], None]:
    module_name, _, function = target.partition(":")
    entry: Callable[[list[str]], None] = getattr(importlib.import_module(module_name), function)
    return entry


def _fork_worker(index: int, target: str, argv: list[str]) -> int:
    pid = os.fork()
    if pid == 0:  # the worker: a fresh service process in all but name
        os.environ[WORKER_ENV] = str(index)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
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


def _serve_aggregated_metrics(address: str, port: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=address, registry=registry)


def _supervise(count: int, target: str, argv: list[str], address: str, metrics_port: int) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="outrider-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    os.environ[REUSE_PORT_ENV] = "1"
    workers = {_fork_worker(i, target, argv): i for i in range(count)}
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _serve_aggregated_metrics(address, metrics_port)
    from prometheus_client import multiprocess

    code = 0
    try:
        while workers:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            index = workers.pop(pid, None)
            if index is None:
                continue
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
            exit_code = os.waitstatus_to_exitcode(status)
            if not stopping:
                # A crashed worker is replaced; its siblings kept serving on the shared port meanwhile.
                print(f"worker {index} (pid {pid}) exited with {exit_code}; restarting", file=sys.stderr, flush=True)
                time.sleep(0.5)
                workers[_fork_worker(index, target, argv)] = index
            elif exit_code != 0:
                code = exit_code
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
    sys.exit(_supervise(workers, target, argv, address, metrics_port))
