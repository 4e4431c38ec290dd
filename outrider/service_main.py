"""The command line every outrider service shares: standalone (`--config FILE`) or control-plane (`--xds`) mode.

Both modes go through one path: a config source hands `(version, payload)` — the service plugin's
payload — to the service runtime's `apply`, which builds everything new and swaps it in atomically, or
raises and keeps the old. Standalone mode computes the payload from the file (and re-computes it when
the file changes); control-plane mode receives it over ADS. The gRPC port binds at once; health says
SERVING only once a first version is live.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from outrider.config import ConfigError, GatewayConfig, load_config
from outrider.config.errors import format_loc
from outrider.config.watch import FileChangeDetector
from outrider.envoy_metrics import serve_envoy_metrics
from outrider.grpc_runtime import serve
from outrider.logs import setup_logging
from outrider.metrics import config_reloads, start_metrics_server
from outrider.plugins import ServicePlugin
from outrider.service_resource import canonical_json
from outrider.workers import metrics_served_by_parent
from outrider.xds_client import ApplyFn, ServiceConfigClient, reason_of

log = logging.getLogger("outrider.service")

RunService = Callable[[GatewayConfig, Path], Coroutine[Any, Any, None]]

# How often standalone mode looks at its files (a stat each; contents are hashed only when a stat moved).
WATCH_INTERVAL_S = 0.5


@dataclass(frozen=True)
class StartupSettings:
    """What a service needs before it has any config version: where it listens and how it logs.

    From the file's `services.<section>` in standalone mode, from flags in control-plane mode.
    """

    service: str
    address: str
    port: int
    metrics_port: int
    log_level: str = "info"
    # Envoy's admin URL when this process's /metrics also carries the gateway's Envoy-derived metrics
    # (outrider/envoy_metrics.py): the one process a pod is scraped on (--envoy-admin).
    envoy_admin: str | None = None


class ServiceRuntime(Protocol):
    """A service's live state behind its gRPC servicers, replaced one config version at a time."""

    @property
    def health_names(self) -> Sequence[str]:
        """gRPC service names reported on health (besides "")."""
        ...

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicers to the server (once, before it starts; they read the live version per call)."""
        ...

    async def apply(self, version: str, payload: Mapping[str, Any]) -> None:
        """Build everything for this payload, then swap it in atomically; raise to refuse (the old stays)."""
        ...

    async def close(self) -> None:
        """Release what the live version holds (connections, background tasks)."""
        ...

    # Optional, looked up with getattr (a runtime need not define it):
    #     ready: asyncio.Event
    # set once the live version can serve (e.g. ext_authz: keys loaded for every provider); gRPC health
    # says SERVING only when it is set and a first version is applied.


def _no_paths(_config: GatewayConfig) -> Sequence[Path]:
    return ()


@dataclass(frozen=True)
class ServiceSpec:
    """One service as the runner sees it: its plugin, and how to make its runtime."""

    plugin: ServicePlugin
    description: str
    runtime: Callable[[StartupSettings], ServiceRuntime]
    # Section under `services:` with address/port/metrics_port; the plugin's name when None.
    section: str | None = None
    # Files besides the config file whose edits change the payload (standalone mode watches them too).
    watch_paths: Callable[[GatewayConfig], Sequence[Path]] = field(default=_no_paths)

    @property
    def name(self) -> str:
        return self.plugin.name

    def settings_from(self, config: GatewayConfig) -> StartupSettings:
        section = getattr(config.services, self.section or self.plugin.name)
        return StartupSettings(self.name, section.address, section.port, section.metrics_port,
                               config.logging.level)


class ConfigSource(Protocol):
    """Where config versions come from. `start` runs before the port binds; `run` forever after."""

    ready: asyncio.Event

    async def start(self, apply: ApplyFn) -> None: ...

    async def run(self) -> None: ...


def _issues_of(exc: BaseException) -> list[dict[str, Any]]:
    if isinstance(exc, ConfigError):
        return [{"field": format_loc(i.loc), "line": i.line, "reason": i.message} for i in exc.issues]
    return [{"field": None, "line": None, "reason": reason_of(exc)}]


async def poll_forever(poll: Callable[[], Coroutine[Any, Any, bool]], interval_s: float) -> None:
    """A config source's watch loop: `poll` every interval; a failed poll is logged and the loop goes on."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await poll()
        except Exception:  # a watcher that dies silently would be worse than a logged failure
            log.exception("config poll failed")


class FileSource:
    """Standalone mode: the payload comes from a config file, re-read when it (or a file it names) changes.

    The one kernel watcher of every service: a change that fails to load, to give a payload, or to apply
    keeps the last good version live and is logged with the file, the field and the reason.
    """

    def __init__(self, spec: ServiceSpec, path: Path, config: GatewayConfig,
                 interval_s: float = WATCH_INTERVAL_S) -> None:
        self._spec = spec
        self._path = path
        self._config = config
        self._interval_s = interval_s
        self._files = FileChangeDetector([path, *spec.watch_paths(config)])
        self._apply: ApplyFn | None = None
        self._live: str | None = None
        self.ready = asyncio.Event()
        self.version: str | None = None

    def _version(self) -> str:
        # The files' digest: the same bytes give the same version, across restarts too.
        return f"file-{self._files.digest[:16]}"

    async def start(self, apply: ApplyFn) -> None:
        """Apply the file as loaded at start; failing here ends the service (there is no last good one)."""
        self._apply = apply
        payload = self._spec.plugin.payload(self._config)
        version = self._version()
        try:
            await apply(version, payload)
        except Exception as exc:
            raise SystemExit(f"{self._path}: {reason_of(exc)}") from exc
        self._live, self.version = canonical_json(payload), version
        self.ready.set()

    async def poll(self) -> bool:
        """Reload if a watched file really changed; True when a new version went live."""
        assert self._apply is not None, "start() first"
        if not self._files.changed():
            return False
        version = self._version()
        try:
            # Off the event loop: reading and parsing files (a descriptor file set waits for a writer to
            # finish) must not hold the decisions this process is answering meanwhile.
            config, payload, text = await asyncio.to_thread(self._load)
        except Exception as exc:  # a bad edit is reported; it never takes the service down
            config_reloads().labels(self._spec.name, "rejected").inc()
            self._rejected(exc)
            return False
        paths = [self._path, *self._spec.watch_paths(config)]
        if text == self._live:
            log.info("config file changed, this service's part did not", extra={"file": str(self._path)})
            self._rewatch(paths)
            return False
        try:
            await self._apply(version, payload)
        except Exception as exc:
            self._rejected(exc)
            return False
        self._rewatch(paths)
        self._live, self.version = text, version
        log.info("config reloaded", extra={"file": str(self._path), "version": version})
        return True

    def _load(self) -> tuple[GatewayConfig, Mapping[str, Any], str]:
        config = load_config(self._path)
        payload = self._spec.plugin.payload(config)
        return config, payload, canonical_json(payload)

    def _rewatch(self, paths: list[Path]) -> None:
        # The set of files may change with the config: watch the new set, keeping the digest just seen.
        if paths != self._files.paths:
            self._files.watch(paths)

    def _rejected(self, exc: BaseException) -> None:
        log.error("config change rejected; the last good config stays live",
                  extra={"file": getattr(exc, "filename", str(self._path)), "issues": _issues_of(exc),
                         "kept": self.version})

    async def run(self) -> None:
        await poll_forever(self.poll, self._interval_s)


class XdsSource:
    """Control-plane mode: the payload comes from the service's ADS subscription."""

    def __init__(self, spec: ServiceSpec, target: str, node_id: str, node_cluster: str, **client_options: Any):
        self._spec = spec
        self._target = target
        self._node_id = node_id
        self._node_cluster = node_cluster
        self._options = client_options
        self.client: ServiceConfigClient | None = None
        self.ready = asyncio.Event()

    async def start(self, apply: ApplyFn) -> None:
        self.client = ServiceConfigClient(self._target, self._node_id, self._node_cluster,
                                          self._spec.plugin.type_url, apply, **self._options)
        self.ready = self.client.first_applied

    async def run(self) -> None:
        assert self.client is not None, "start() first"
        await self.client.run()


def counted(service: str, apply: ApplyFn) -> ApplyFn:
    """apply, counting each version applied or rejected (outrider_config_reloads_total)."""
    reloads = config_reloads()
    applied, rejected = reloads.labels(service, "applied"), reloads.labels(service, "rejected")

    async def counting(version: str, payload: Mapping[str, Any]) -> None:
        try:
            await apply(version, payload)
        except Exception:
            rejected.inc()
            raise
        applied.inc()

    return counting


def all_set(events: Sequence[asyncio.Event], tasks: list[asyncio.Task[None]]) -> asyncio.Event:
    """An event set once every one of `events` is set (the waiting task goes into `tasks`)."""
    if len(events) == 1:
        return events[0]
    combined = asyncio.Event()

    async def wait_all() -> None:
        for event in events:
            await event.wait()
        combined.set()

    tasks.append(asyncio.create_task(wait_all()))
    return combined


async def run_service(spec: ServiceSpec, settings: StartupSettings, source: ConfigSource,
                      *, drain_grace_s: float = 5.0, stop: asyncio.Event | None = None) -> None:
    """Serve one service until SIGTERM: runtime ← versions from the source; health gated on the first
    version and on the runtime's own `ready` when it has one."""
    runtime = spec.runtime(settings)
    tasks: list[asyncio.Task[None]] = []
    try:
        await source.start(counted(spec.name, runtime.apply))
        if settings.metrics_port:  # 0: no /metrics endpoint (tests running several services in one process)
            if settings.envoy_admin and not metrics_served_by_parent():  # else the parent serves it
                serve_envoy_metrics(settings.envoy_admin)
            start_metrics_server(settings.address, settings.metrics_port)
        tasks.append(asyncio.create_task(source.run()))
        runtime_ready: asyncio.Event | None = getattr(runtime, "ready", None)
        ready = all_set([source.ready] if runtime_ready is None else [source.ready, runtime_ready], tasks)
        await serve(runtime.register, settings.address, settings.port, runtime.health_names,
                    drain_grace_s=drain_grace_s, ready=ready, stop=stop)
    finally:
        await cancel_tasks(tasks)
        await runtime.close()


def _parser(spec: ServiceSpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {spec.name}", description=spec.description)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--config", type=Path, help="standalone: run from this gateway config file (watched)")
    mode.add_argument("--xds", metavar="HOST:PORT[,HOST:PORT...]",
                      help="control-plane mode: ADS server(s) to subscribe to; several replicas are tried in "
                           "order and failed over")
    xds = parser.add_argument_group("control-plane mode (--xds)")
    xds.add_argument("--node-id", help="this service's node id, e.g. outrider-gateway/" + spec.name)
    xds.add_argument("--node-cluster", help="the gateway's node cluster (services.xds.node_cluster)")
    xds.add_argument("--address", default="127.0.0.1", help="gRPC and /metrics listen address")
    xds.add_argument("--port", type=int, help="gRPC port")
    xds.add_argument("--metrics-port", type=int, help="/metrics port")
    xds.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    xds.add_argument("--xds-ca", type=Path, help="mTLS: the CA file that signs the control plane's certificate")
    xds.add_argument("--xds-cert", type=Path, help="mTLS: this service's client certificate")
    xds.add_argument("--xds-key", type=Path, help="mTLS: this service's client key")
    xds.add_argument("--xds-server-name", help="mTLS: the name in the control plane's certificate")
    parser.add_argument("--envoy-admin", metavar="URL",
                        help="also serve the gateway's metrics derived from this Envoy admin's stats on /metrics")
    # Read by outrider.workers.launch before this parser runs; accepted here so workers parse the same argv.
    parser.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def startup(spec: ServiceSpec, argv: list[str] | None = None) -> tuple[StartupSettings, ConfigSource]:
    """Parse the command line: the start-up settings and the config source of either mode."""
    parser = _parser(spec)
    args = parser.parse_args(argv)
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise SystemExit(str(exc)) from None
        settings = dataclasses.replace(spec.settings_from(config), envoy_admin=args.envoy_admin)
        return settings, FileSource(spec, args.config, config)
    missing = [flag for flag, value in (("--node-id", args.node_id), ("--node-cluster", args.node_cluster),
                                        ("--port", args.port), ("--metrics-port", args.metrics_port))
               if value is None]
    if missing:
        parser.error(f"--xds needs {', '.join(missing)}")
    bad = [t for t in args.xds.split(",") if not _host_port(t.strip())]
    if bad:
        parser.error(f"--xds: {', '.join(repr(t) for t in bad)} is not HOST:PORT")
    settings = StartupSettings(spec.name, args.address, args.port, args.metrics_port, args.log_level,
                               args.envoy_admin)
    tls = (args.xds_ca, args.xds_cert, args.xds_key)
    if any(tls) and not all(tls):
        parser.error("mTLS to the control plane needs --xds-ca, --xds-cert and --xds-key together")
    options: dict[str, Any] = {}
    if all(tls):
        options["channel_credentials"] = grpc.ssl_channel_credentials(
            args.xds_ca.read_bytes(), args.xds_key.read_bytes(), args.xds_cert.read_bytes())
        options["server_name"] = args.xds_server_name
    return settings, XdsSource(spec, args.xds, args.node_id, args.node_cluster, **options)


def _host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 1 <= int(port) <= 65535)


def run_main(spec: ServiceSpec, argv: list[str] | None = None) -> None:
    """`python -m <service> (--config FILE | --xds HOST:PORT --node-id ID ...)`: log JSON, run on uvloop."""
    settings, source = startup(spec, argv)
    setup_logging(spec.name, settings.log_level)
    import uvloop

    uvloop.run(run_service(spec, settings, source))


def service_main(name: str, description: str, run: RunService, argv: list[str] | None = None) -> None:
    """`python -m <name> --config FILE` for services not yet on run_main: load, log JSON, run on uvloop."""
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=description)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    path = Path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    setup_logging(name, config.logging.level)
    import uvloop

    uvloop.run(run(config, path))


async def cancel_tasks(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel background tasks and wait until each has finished."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
