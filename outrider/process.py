"""Child processes with readiness polls and clean stops (used by `outrider run` and the tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from outrider.lifetime import die_with_parent


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_ready(address: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection((address, port), timeout=0.2):
                return True
        except OSError:
            return False
    return check


def http_ready(url: str, expect_status: int = 200) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:  # noqa: S310 - loopback URLs we build
                return bool(response.status == expect_status)
        except Exception:  # any failure just means "not ready yet"
            return False
    return check


def grpc_serving(address: str, port: int, service: str = "") -> Callable[[], bool]:
    """Ready once the gRPC health service says SERVING (a service in control-plane mode: it has its config)."""

    def check() -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            with grpc.insecure_channel(f"{address}:{port}") as channel:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=0.5)
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False
    return check


class ProcessFailed(RuntimeError):
    pass


class ManagedProcess:
    """One child process: start, poll until ready, stop with SIGTERM then SIGKILL."""

    def __init__(self, name: str, argv: Sequence[str], ready: Callable[[], bool] | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.ready = ready
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start (or start again after a stop or a kill)."""
        if self.running:
            raise ProcessFailed(f"{self.name} is already running")
        if self.log_path is not None and self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, **(self.env or {})}
        parent = os.getpid()
        self.proc = subprocess.Popen(
            self.argv, env=env, cwd=self.cwd,
            stdout=self._log if self._log else None, stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,  # Ctrl-C goes to the supervisor, which stops children in order
            # A supervisor killed hard cannot stop its children: the kernel does, so no orphan keeps a port.
            preexec_fn=lambda: die_with_parent(parent),
        )
        return self

    def wait_ready(self, timeout_s: float = 20.0) -> ManagedProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ProcessFailed(f"{self.name} exited with code {self.proc.returncode}{self._tail()}")
            if self.ready is None or self.ready():
                return self
            time.sleep(0.05)
        raise ProcessFailed(f"{self.name} not ready after {timeout_s}s{self._tail()}")

    def _tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n--- last log lines ---\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.running and self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None
        return proc.returncode if proc is not None else None
