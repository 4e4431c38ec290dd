"""Run one PodSpec as local processes, as a kubelet would: start order, probes, restarts, preStop, grace period.

Each container is `ip netns exec <pod ns> unshare --mount sh -c <mounts> <command>`: the pod's network
namespace (shared by its containers, so 127.0.0.1 is the pod) and a mount namespace of its own with the
pod's volumes bind-mounted. Probes come from the host to the pod's address, as the kubelet's do.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from outrider.pod.mounts import mount_script, read_only_volumes, write_volumes
from outrider.pod.probe_state import ProbeState
from outrider.pod.probes import check, http_check
from outrider.pod.spec import Container, Handler, PodSpec, Probe
from outrider.process import DIE_WITH_PARENT

VENV_BIN = Path(sys.executable).parent
# What the image's `python`/`outrider` need from the host: the venv and the source tree (an editable install).
# A volume mounted over them (a checkout under /tmp, the gateway pod's emptyDir at /tmp) must not hide them.
HOST_PATHS_NEEDED = (Path(sys.prefix), Path(__file__).resolve().parents[2])
RESTART_DELAY_S = 1.0  # the kubelet backs off from 10 s; a local harness restarts sooner


class PodError(RuntimeError):
    pass


class _Launcher:
    """Starts every container process from one thread that lives as long as this process.

    The parent-death signal (setpriv --pdeathsig, so no container outlives a crashed harness) fires when the
    *thread* that forked the child ends, not the process: a container started from a short-lived thread (a
    test starting two pods at once, a restart from a probe thread) would get SIGTERM as soon as it ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.Queue[tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]]
        self._requests = queue.Queue()
        self._thread: threading.Thread | None = None

    def _serve(self) -> None:
        while True:
            make, future = self._requests.get()
            try:
                future.set_result(make())
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)

    def popen(self, make: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="pod-launcher", daemon=True)
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((make, future))
        return future.result()


LAUNCHER = _Launcher()


def local_argv(argv: Sequence[str]) -> list[str]:
    """The image's `python` and `outrider` are this venv's (the image would have the same packages)."""
    first, rest = argv[0], list(argv[1:])
    if first in ("python", "python3") or first.startswith("/usr/local/bin/python"):
        return [sys.executable, *rest]
    if first == "outrider" or first.endswith("/bin/outrider"):
        return [str(VENV_BIN / "outrider"), *rest]
    return [first, *rest]


@dataclass
class ContainerState:
    """One container's process and what its probes say."""

    spec: Container
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started: threading.Event = field(default_factory=threading.Event)  # startup probe passed (or none)
    readiness: ProbeState | None = None
    exit_code: int | None = None
    killed: bool = False  # SIGKILLed at the end of the grace period
    pre_stop_s: float | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def ready(self) -> bool:
        if not self.running or not self.started.is_set():
            return False
        return self.readiness.passing if self.readiness is not None else True


@dataclass
class StopReport:
    duration_s: float
    exit_codes: dict[str, int | None]
    killed: list[str]
    pre_stop_s: dict[str, float]
    order: list[str]  # containers in the order they got SIGTERM


class Pod:
    """A running pod. start() → ready → stop(); `terminating` is what an endpoints controller reads."""

    def __init__(self, spec: PodSpec, workdir: Path, netns: str | None = None, ip: str = "127.0.0.1",
                 on_event: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.workdir = workdir
        self.netns = netns
        self.ip = ip
        self.on_event = on_event
        self.containers = {c.name: ContainerState(c) for c in spec.containers}
        self.events: list[tuple[float, str]] = []
        self.terminating = False
        self._stopping = threading.Event()  # probes and restarts end
        self._threads: list[threading.Thread] = []
        self._logs: dict[str, IO[bytes]] = {}
        self._volumes: dict[str, Path] = {}
        self._read_only = read_only_volumes(spec)
        self._lock = threading.Lock()

    # ---- status -------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Kubernetes' Ready condition: every main container and native sidecar ready, pod not terminating."""
        if self.terminating:
            return False
        return all(c.ready for c in self.containers.values() if c.spec.role != "init")

    def event(self, text: str) -> None:
        self.events.append((time.monotonic(), text))
        if self.on_event is not None:
            self.on_event(f"pod {self.spec.name}: {text}")

    def log_path(self, container: str) -> Path:
        return self.workdir / "logs" / f"{container}.log"

    def log_tail(self, container: str, lines: int = 30) -> str:
        path = self.log_path(container)
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # ---- processes ----------------------------------------------------------------------------------------
    def _env(self, container: Container) -> dict[str, str]:
        env = {"PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": "/root",
               "HOSTNAME": self.spec.name, "LANG": "C.UTF-8"}
        env.update(dict(container.env))
        return env

    def _launch(self, state: ContainerState) -> None:
        spec = state.spec
        script = mount_script(spec, self._volumes, self._read_only, keep=HOST_PATHS_NEEDED,
                              stage=self.workdir / "kept")
        inner = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, spec.name,
                 *local_argv(spec.argv)]
        argv = [*DIE_WITH_PARENT, *(["ip", "netns", "exec", self.netns] if self.netns else []), *inner]
        log = self._logs.get(spec.name)
        if log is None:
            log = self._logs[spec.name] = open(self.log_path(spec.name), "ab")  # noqa: SIM115 - closed in stop()
        env = self._env(spec)
        state.proc = LAUNCHER.popen(lambda: subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                             stdin=subprocess.DEVNULL, cwd="/",
                                                             start_new_session=True))
        state.started.clear()
        state.readiness = None if spec.readiness is None else ProbeState(
            spec.readiness.success_threshold, spec.readiness.failure_threshold)
        if spec.startup is None:
            state.started.set()
        self.event(f"started {spec.name} (pid {state.proc.pid})")

    def run_in_container(self, state: ContainerState, command: Sequence[str], timeout_s: float) -> int:
        """Run a command inside a running container (its network and mount namespaces, its env): exec probes
        and exec hooks."""
        if state.proc is None or state.proc.poll() is not None:
            return 1
        argv = ["nsenter", "--target", str(state.proc.pid), "--mount", "--net", "--", *local_argv(command)]
        log = self._logs.get(state.spec.name)
        return subprocess.run(argv, env=self._env(state.spec), stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout_s, check=False, cwd="/").returncode

    def _probe(self, state: ContainerState, probe: Probe) -> bool:
        return check(probe, self.ip, lambda cmd, timeout: self.run_in_container(state, cmd, timeout))

    # ---- the kubelet's loop for one container -------------------------------------------------------------
    def _supervise(self, state: ContainerState) -> None:
        """Probes on their periods; restart on exit or on failed startup/liveness probes (restartPolicy Always)."""
        spec = state.spec
        while not self._stopping.is_set():
            generation_start = time.monotonic()
            startup = ProbeState(1, spec.startup.failure_threshold) if spec.startup else None
            liveness = ProbeState(1, spec.liveness.failure_threshold) if spec.liveness else None
            next_at: dict[str, float] = {}
            for kind, probe in (("startup", spec.startup), ("readiness", spec.readiness), ("liveness", spec.liveness)):
                if probe is not None:
                    next_at[kind] = generation_start + probe.initial_delay_s
            restart_reason = ""
            while not self._stopping.is_set() and not restart_reason:
                if state.proc is not None and state.proc.poll() is not None:
                    if self.terminating:
                        return
                    restart_reason = f"exited with code {state.proc.returncode}"
                    break
                now = time.monotonic()
                for kind, due in sorted(next_at.items(), key=lambda item: item[1]):
                    if due > now:
                        continue
                    if kind != "startup" and not state.started.is_set():
                        continue  # readiness and liveness begin once the startup probe passed
                    if kind == "liveness" and self.terminating:
                        continue  # a draining container is not restarted
                    probe = {"startup": spec.startup, "readiness": spec.readiness, "liveness": spec.liveness}[kind]
                    assert probe is not None
                    ok = self._probe(state, probe)
                    next_at[kind] = time.monotonic() + probe.period_s
                    if kind == "startup" and startup is not None:
                        startup.record(ok)
                        if startup.passing:
                            state.started.set()
                            del next_at["startup"]
                            self.event(f"{spec.name} startup probe passed")
                        elif startup.failed:
                            restart_reason = "startup probe failed"
                    elif kind == "readiness" and state.readiness is not None:
                        if state.readiness.record(ok):
                            self.event(f"{spec.name} {'ready' if state.readiness.passing else 'NOT ready'}")
                    elif kind == "liveness" and liveness is not None:
                        liveness.record(ok)
                        if liveness.failed:
                            restart_reason = "liveness probe failed"
                    break  # re-read the clock after each check
                self._stopping.wait(0.05)
            if self._stopping.is_set() or self.terminating:
                return
            self.event(f"{spec.name} {restart_reason}; restarting in {RESTART_DELAY_S}s")
            self._signal(state, signal.SIGKILL)
            if self._stopping.wait(RESTART_DELAY_S):
                return
            with self._lock:
                if self.terminating:
                    return
                state.restarts += 1
                self._launch(state)

    def _watch(self, state: ContainerState) -> None:
        thread = threading.Thread(target=self._supervise, args=(state,), name=f"pod-{state.spec.name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    # ---- start --------------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 120.0) -> Pod:
        """Start in Kubernetes' order; returns once the main containers are started (not necessarily ready)."""
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self._volumes = write_volumes(self.spec, self.workdir / "volumes")
        deadline = time.monotonic() + timeout_s
        for container in self.spec.start_plan():
            state = self.containers[container.name]
            with self._lock:
                self._launch(state)
            if container.role == "init":
                assert state.proc is not None
                try:
                    code = state.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise PodError(f"init container {container.name} still running after {timeout_s}s") from None
                state.exit_code = code
                if code != 0:
                    raise PodError(f"init container {container.name} exited with code {code}\n"
                                   f"{self.log_tail(container.name)}")
                continue
            self._watch(state)
            if container.role == "sidecar":
                # Kubernetes starts the next container only once this sidecar's startup probe passed.
                while not state.started.wait(0.05):
                    if time.monotonic() > deadline:
                        raise PodError(f"sidecar {container.name}: startup probe not passed after {timeout_s}s\n"
                                       f"{self.log_tail(container.name)}")
        self.event("all containers started")
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> Pod:
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            if time.monotonic() > deadline:
                status = {n: (c.running, c.started.is_set(), c.ready) for n, c in self.containers.items()}
                tails = "\n".join(f"--- {n} ---\n{self.log_tail(n, 15)}" for n in self.containers)
                raise PodError(f"pod {self.spec.name} not ready after {timeout_s}s "
                               f"(running, started, ready): {status}\n{tails}")
            time.sleep(0.05)
        self.event("ready")
        return self

    # ---- stop ---------------------------------------------------------------------------------------------
    def _signal(self, state: ContainerState, sig: signal.Signals) -> None:
        """SIGTERM to the container's process (its PID 1); SIGKILL to its whole process group (its workers)."""
        if state.proc is not None and state.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if sig == signal.SIGKILL:
                    os.killpg(state.proc.pid, sig)
                else:
                    os.kill(state.proc.pid, sig)

    def _pre_stop(self, state: ContainerState, handler: Handler, deadline: float) -> None:
        started = time.monotonic()
        budget = max(0.1, deadline - started)
        if handler.kind == "exec":
            try:
                code = self.run_in_container(state, handler.command, budget)
            except subprocess.TimeoutExpired:
                code = -1
            if code != 0:
                self.event(f"{state.spec.name} preStop exited with {code} (FailedPreStopHook; stopping anyway)")
        elif handler.kind == "httpGet":
            assert handler.port is not None
            http_check(handler.host or self.ip, handler.port, handler.path, (), budget)
        else:
            time.sleep(min(handler.sleep_s, budget))
        state.pre_stop_s = time.monotonic() - started

    def _terminate(self, states: list[ContainerState], deadline: float, order: list[str]) -> None:
        """preStop hooks (together), then SIGTERM, then wait for exit; all within the deadline."""
        hooks = [threading.Thread(target=self._pre_stop, args=(s, s.spec.pre_stop, deadline), daemon=True)
                 for s in states if s.spec.pre_stop is not None and s.running]
        for hook in hooks:
            hook.start()
        for hook in hooks:
            hook.join(max(0.0, deadline - time.monotonic()))
        if time.monotonic() >= deadline:
            return  # the grace period is over: no SIGTERM now, the SIGKILL that follows ends them all
        for state in states:
            order.append(state.spec.name)
            self._signal(state, signal.SIGTERM)
        for state in states:
            if state.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                state.proc.wait(max(0.0, deadline - time.monotonic()))

    def stop(self, grace_s: float | None = None) -> StopReport:
        """Kubernetes' termination: main containers (preStop, SIGTERM), then each sidecar in reverse start
        order; SIGKILL for whatever is alive when terminationGracePeriodSeconds is over."""
        started = time.monotonic()
        with self._lock:
            self.terminating = True  # endpoints drop the pod now, before any preStop hook runs
        self.event("terminating")
        deadline = started + (self.spec.grace_period_s if grace_s is None else grace_s)
        mains, sidecars = self.spec.stop_plan()
        order: list[str] = []
        self._terminate([self.containers[c.name] for c in mains], deadline, order)
        for sidecar in sidecars:
            self._terminate([self.containers[sidecar.name]], deadline, order)
        self._stopping.set()
        for state in self.containers.values():
            if state.running:
                state.killed = True
                self.event(f"{state.spec.name} still running at the end of the grace period: SIGKILL")
                self._signal(state, signal.SIGKILL)
            if state.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    state.proc.wait(5)
                if state.spec.role != "init":
                    state.exit_code = state.proc.returncode
        for thread in self._threads:
            thread.join(2)
        for log in self._logs.values():
            with contextlib.suppress(OSError):
                log.close()
        self._logs.clear()
        self.event("stopped")
        return StopReport(duration_s=time.monotonic() - started,
                          exit_codes={n: c.exit_code for n, c in self.containers.items()},
                          killed=[n for n, c in self.containers.items() if c.killed],
                          pre_stop_s={n: c.pre_stop_s for n, c in self.containers.items() if c.pre_stop_s is not None},
                          order=order)

    def remove_files(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
