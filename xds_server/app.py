"""Composition root of xds_server: config + persisted state → snapshot cache → ADS, admin API, file watch."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml

from outrider.config import ConfigError, GatewayConfig, load_config_data, load_config_given
from outrider.config.xds import XdsService
from outrider.grpc_runtime import serve
from outrider.logs import setup_logging
from outrider.metrics import start_metrics_server
from outrider.plugins import ServicePlugin, discover
from outrider.service_main import cancel_tasks
from outrider.service_resource import encode_json
from xds_server.admin import build_admin_app, start_admin
from xds_server.admin_auth import AdminTokenMissing, admin_token, guard
from xds_server.cache import SnapshotCache
from xds_server.control import Controller
from xds_server.metrics import MetricsCallbacks
from xds_server.nodes import NodePolicy
from xds_server.resources import ServiceResources, SnapshotBuilder
from xds_server.service import SERVICE, AdsService
from xds_server.snapshot import Resource
from xds_server.store import FileStore, State
from xds_server.tls import server_credentials
from xds_server.watch import ConfigFileWatcher, file_digest

log = logging.getLogger("xds_server")


def state_dir(settings: XdsService, config_path: Path) -> Path:
    path = settings.state_dir
    return path if path.is_absolute() else config_path.resolve().parent / path


def persisted_fallback(config_path: Path, error: ConfigError) -> tuple[dict[str, Any], GatewayConfig]:
    """A broken config file at start: serve the last accepted state if there is one, else refuse to start."""
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        settings = XdsService.model_validate(raw.get("services", {}).get("xds", {}))
    except Exception:
        raise SystemExit(str(error)) from None
    store = FileStore(state_dir(settings, config_path))
    state = store.load()
    loaded = _validated(state, store, config_path) if state is not None else None
    if loaded is None:
        raise SystemExit(str(error))
    log.error("config file rejected; serving the persisted state",
              extra={"version": loaded[2], "problems": [i.render(error.filename) for i in error.issues]})
    return loaded[0], loaded[1]


def _validated(state: State, store: FileStore, config_path: Path) -> tuple[dict[str, Any], GatewayConfig, int] | None:
    """The persisted state validated as the file would be (paths relative to the config file's folder)."""
    try:
        config = load_config_data(state.given, str(store.path), config_path.resolve().parent)
    except ConfigError as exc:
        log.error("persisted state no longer validates; serving the config file",
                  extra={"problems": [i.render(exc.filename) for i in exc.issues]})
        return None
    return state.given, config, state.version


def initial_state(given: dict[str, Any], config: GatewayConfig, digest: str, store: FileStore,
                  config_path: Path, file_ok: bool = True) -> tuple[dict[str, Any], GatewayConfig, int, bool]:
    """(given, config, version, persist?): the persisted state if the file is unchanged since, else the file."""
    state = store.load()
    if state is None:
        if store.exists():
            log.error("state file unreadable; serving the config file", extra={"path": str(store.path)})
        return given, config, 1, True
    if not file_ok or state.file_digest == digest:
        loaded = _validated(state, store, config_path)
        if loaded is not None:
            log.info("serving persisted state", extra={"version": state.version})
            return loaded[0], loaded[1], loaded[2], False
        return given, config, state.version + 1, True
    log.info(
        "config file changed while stopped; it replaces the persisted state",
        extra={"previous_version": state.version},
    )
    return given, config, state.version + 1, True


def plugin_resources(plugins: Sequence[ServicePlugin]) -> ServiceResources:
    """Each service's share of a version, in its own resource type (one resource, named after the service)."""

    def build(config: GatewayConfig, version: str) -> dict[str, dict[str, Resource]]:
        return {
            plugin.type_url: {plugin.name: Resource.of(plugin.name, encode_json(plugin.type_url, version,
                                                                                plugin.payload_json(config)))}
            for plugin in plugins
        }

    return build


async def run_service(given: dict[str, Any], config: GatewayConfig, config_path: Path, token: str,
                      file_ok: bool = True) -> None:
    settings = config.services.xds
    nodes = NodePolicy.of(settings)
    key = nodes.gateway_key
    cache = SnapshotCache(nodes.key, MetricsCallbacks())
    config_dir = config_path.parent  # main() resolved it
    store = FileStore(state_dir(settings, config_path))
    digest = file_digest(config_path)
    given, served, version, persist = initial_state(given, config, digest, store, config_path, file_ok)
    builder = SnapshotBuilder(plugin_resources(discover()))
    controller = Controller(cache, store, key, served, given, version, digest, settings.ack_timeout_ms / 1000,
                            builder)
    # The snapshot exists before the first stream can open: a reconnecting Envoy never sees an empty one.
    controller.start(persist)
    ads = AdsService(cache, admits=nodes.admits)

    def register(server: grpc.aio.Server) -> None:
        ads.register(server)

    start_metrics_server(settings.address, settings.metrics_port)
    socket_path = settings.admin_socket
    if socket_path is not None and not socket_path.is_absolute():
        socket_path = config_dir / socket_path
    runner = await start_admin(
        build_admin_app(controller, cache, [guard(token, settings.admin_allowed_hosts)]),
        settings.admin_address, settings.admin_port, socket_path,
    )
    tasks = []
    if settings.watch_interval_ms > 0:

        async def apply_file(new_given: dict[str, Any], new: GatewayConfig, new_digest: str) -> object:
            return await controller.apply(new, "file", new_given, file_digest=new_digest)

        watcher = ConfigFileWatcher(config_path, digest, settings.watch_interval_ms / 1000, apply_file)
        tasks.append(asyncio.create_task(watcher.run()))
    try:
        credentials = server_credentials(settings.tls) if settings.tls is not None else None
        await serve(register, settings.address, settings.port, [SERVICE], drain_grace_s=1.0, credentials=credentials)
    finally:
        await cancel_tasks(tasks)
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xds_server", description="outrider xDS control plane")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    path = Path(args.config)
    try:
        (given, config), file_ok = load_config_given(path), True
    except ConfigError as exc:
        setup_logging("xds_server", "info")
        (given, config), file_ok = persisted_fallback(path, exc), False
    setup_logging("xds_server", config.logging.level)
    try:
        token = admin_token(config.services.xds, path.resolve().parent)
    except AdminTokenMissing as exc:
        raise SystemExit(f"xds_server: {exc}") from None
    import uvloop

    uvloop.run(run_service(given, config, path.resolve(), token, file_ok))
