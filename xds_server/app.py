"""Composition root of xds_server: config + persisted state → snapshot cache → ADS, admin API, file watch."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import grpc
import yaml

from outrider.config import ConfigError, GatewayConfig, load_config
from outrider.config.xds import XdsService
from outrider.grpc_runtime import serve
from outrider.logs import setup_logging
from outrider.metrics import start_metrics_server
from outrider.service_main import cancel_tasks
from xds_server.admin import build_admin_app, start_admin
from xds_server.cache import SnapshotCache
from xds_server.control import Controller
from xds_server.metrics import MetricsCallbacks
from xds_server.protocol import Node
from xds_server.service import SERVICE, AdsService
from xds_server.store import Store
from xds_server.watch import ConfigFileWatcher, file_digest

log = logging.getLogger("xds_server")


def node_key_of(settings: XdsService) -> tuple[str, Node]:
    """The cache key the gateway's snapshot is stored under, and a node that maps to it."""
    if settings.node_key == "cluster":
        return settings.node_cluster, Node("", settings.node_cluster)
    return settings.node_id, Node(settings.node_id, settings.node_cluster)


def state_dir(settings: XdsService, config_path: Path) -> Path:
    path = settings.state_dir
    return path if path.is_absolute() else config_path.resolve().parent / path


def persisted_fallback(config_path: Path, error: ConfigError) -> GatewayConfig:
    """A broken config file at start: serve the last accepted state if there is one, else refuse to start."""
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        settings = XdsService.model_validate(raw.get("services", {}).get("xds", {}))
    except Exception:
        raise SystemExit(str(error)) from None
    state = Store(state_dir(settings, config_path)).load()
    if state is None:
        raise SystemExit(str(error))
    log.error("config file rejected; serving the persisted state",
              extra={"version": state.version, "problems": [i.render(error.filename) for i in error.issues]})
    return state.config


def initial_state(config: GatewayConfig, digest: str, store: Store,
                  file_ok: bool = True) -> tuple[GatewayConfig, int, bool]:
    """(config, version, persist?): the persisted state if the file is unchanged since, else the file."""
    state = store.load()
    if state is not None and not file_ok:
        return state.config, state.version, False
    if state is None:
        if store.path.exists():
            log.error("state file unreadable; serving the config file", extra={"path": str(store.path)})
        return config, 1, True
    if state.file_digest == digest:
        log.info("serving persisted state", extra={"version": state.version})
        return state.config, state.version, False
    log.info(
        "config file changed while stopped; it replaces the persisted state",
        extra={"previous_version": state.version},
    )
    return config, state.version + 1, True


async def run_service(config: GatewayConfig, config_path: Path, file_ok: bool = True) -> None:
    settings = config.services.xds
    key, _ = node_key_of(settings)

    def node_key(node: Node) -> str:
        return node.cluster if settings.node_key == "cluster" else node.id

    cache = SnapshotCache(node_key, MetricsCallbacks())
    store = Store(state_dir(settings, config_path))
    digest = file_digest(config_path)
    served, version, persist = initial_state(config, digest, store, file_ok)
    controller = Controller(cache, store, key, served, version, digest, settings.ack_timeout_ms / 1000)
    # The snapshot exists before the first stream can open: a reconnecting Envoy never sees an empty one.
    controller.start(persist)
    ads = AdsService(cache)

    def register(server: grpc.aio.Server) -> None:
        ads.register(server)

    start_metrics_server(settings.address, settings.metrics_port)
    runner = await start_admin(
        build_admin_app(controller, cache), settings.admin_address, settings.admin_port
    )
    tasks = []
    if settings.watch_interval_ms > 0:

        async def apply_file(new: GatewayConfig, new_digest: str) -> object:
            return await controller.apply(new, "file", file_digest=new_digest)

        watcher = ConfigFileWatcher(config_path, digest, settings.watch_interval_ms / 1000, apply_file)
        tasks.append(asyncio.create_task(watcher.run()))
    try:
        await serve(register, settings.address, settings.port, [SERVICE], drain_grace_s=1.0)
    finally:
        await cancel_tasks(tasks)
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xds_server", description="outrider xDS control plane")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    path = Path(args.config)
    try:
        config, file_ok = load_config(path), True
    except ConfigError as exc:
        setup_logging("xds_server", "info")
        config, file_ok = persisted_fallback(path, exc), False
    setup_logging("xds_server", config.logging.level)
    import uvloop

    uvloop.run(run_service(config, path, file_ok))
