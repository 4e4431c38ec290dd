"""Real redis-server processes on free ports for the tests (no persistence, stopped by fixtures)."""

from __future__ import annotations

import shutil
from pathlib import Path

from outrider.process import ManagedProcess, free_port, tcp_ready


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server not found: `make test` installs it (Debian package redis-server)")
    return found


def redis_process(workdir: Path, port: int | None = None, extra: list[str] | None = None,
                  name: str = "redis") -> ManagedProcess:
    """A redis-server on 127.0.0.1:port with nothing written to disk, not yet started."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), *(extra or [])]
    proc = ManagedProcess(name, argv, ready=tcp_ready("127.0.0.1", port), log_path=workdir / f"{name}.log")
    proc.port = port  # type: ignore[attr-defined]
    return proc


def redis_url(proc: ManagedProcess) -> str:
    return f"redis://127.0.0.1:{proc.port}/0"  # type: ignore[attr-defined]
