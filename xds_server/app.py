"""Composition root of xds_server: config + persisted state → snapshot cache → ADS, admin API, file watch."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from outrider.config import ConfigError, GatewayConfig, load_config_data, load_config_given
from outrider.config.xds import RedisStoreSettings, XdsService
from outrider.grpc_runtime import serve
from outrider.logs import setup_logging
from outrider.metrics import start_metrics_server
from outrider.plugins import ServicePlugin, discover
from outrider.service_main import cancel_tasks
from outrider.service_resource import encode_json
from xds_server.admin import build_admin_app, start_admin
from xds_server.admin_auth import AdminTokenMissing, admin_token, guard
from xds_server.cache import SnapshotCache
from xds_server.control import Controller, Loader
from xds_server.metrics import MetricsCallbacks
from xds_server.nodes import NodePolicy
from xds_server.redis_store import RedisStore
from xds_server.resources import ServiceResources, SnapshotBuilder
from xds_server.service import SERVICE, AdsService
from xds_server.snapshot import Resource
from xds_server.store import FileStore, State, Store, StoreUnavailable
from xds_server.tls import server_credentials
from xds_server.watch import ConfigFileWatcher, file_digest

log = logging.getLogger("xds_server")


def state_dir(settings: XdsService, config_path: Path) -> Path:
    path = settings.state_dir
    return path if path.is_absolute() else config_path.resolve().parent / path


def open_store(settings: XdsService, config_path: Path) -> Store:
    """The state store services.xds.store names: the state file, or Redis shared with other replicas."""
    if isinstance(settings.store, RedisStoreSettings):
        env = settings.store.password_env
        return RedisStore(settings.store.url, settings.store.key_prefix,
                          password=(os.environ.get(env) or None) if env else None)
    return FileStore(state_dir(settings, config_path))


def state_loader(config_path: Path) -> Loader:
    """Validates a stored state as the file would be (paths relative to the config file's folder)."""
    folder = config_path.resolve().parent

    def load(given: dict[str, Any]) -> GatewayConfig:
        return load_config_data(given, f"{config_path.name} (stored state)", folder)

    return load


def persisted_fallback(config_path: Path, error: ConfigError) -> tuple[dict[str, Any], GatewayConfig]:
    """A broken config file at start: serve the last accepted state if there is one, else refuse to start."""
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        settings = XdsService.model_validate(raw.get("services", {}).get("xds", {}))
    except Exception:
        raise SystemExit(str(error)) from None

    async def stored() -> State | None:
        store = open_store(settings, config_path)
        try:
            return await store.load()
        except StoreUnavailable:
            return None
        finally:
            await store.close()

    state = asyncio.run(stored())
    loaded = _validated(state, config_path) if state is not None else None
    if loaded is None:
        raise SystemExit(str(error))
    log.error("config file rejected; serving the persisted state",
              extra={"version": loaded[2], "problems": [i.render(error.filename) for i in error.issues]})
    return loaded[0], loaded[1]


def _validated(state: State, config_path: Path) -> tuple[dict[str, Any], GatewayConfig, int] | None:
    """The persisted state validated as the file would be (paths relative to the config file's folder)."""
    try:
        config = state_loader(config_path)(state.given)
    except ConfigError as exc:
        log.error("persisted state no longer validates; serving the config file",
                  extra={"problems": [i.render(exc.filename) for i in exc.issues]})
        return None
    return state.given, config, state.version


@dataclass(frozen=True)
class Initial:
    """What a control plane serves first, and whether (and on which stored version) to persist it."""

    given: dict[str, Any]
    config: GatewayConfig
    version: int
    persist: bool
    expected: int | None = None


async def initial_state(given: dict[str, Any], config: GatewayConfig, digest: str, store: Store,
                        config_path: Path, file_ok: bool = True) -> Initial:
    """The persisted state if the file is unchanged since, else the file (as a newer version)."""
    stored_version = await store.stored_version()
    state = await store.load()
    if state is None:
        if stored_version is not None or (isinstance(store, FileStore) and store.exists()):
            log.error("stored state unreadable; serving the config file")
        return Initial(given, config, (stored_version or 0) + 1, True, stored_version)
    if not file_ok or state.file_digest == digest:
        loaded = _validated(state, config_path)
        if loaded is not None:
            log.info("serving persisted state", extra={"version": state.version})
            return Initial(loaded[0], loaded[1], loaded[2], False)
        return Initial(given, config, state.version + 1, True, state.version)
    log.info(
        "config file changed while stopped; it replaces the persisted state",
        extra={"previous_version": state.version},
    )
    return Initial(given, config, state.version + 1, True, state.version)


def plugin_resources(plugins: Sequence[ServicePlugin]) -> ServiceResources:
    """Each service's share of a version, in its own resource type (one resource, named after the service)."""

    def build(config: GatewayConfig, version: str) -> dict[str, dict[str, Resource]]:
        return {
            plugin.type_url: {plugin.name: Resource.of(plugin.name, encode_json(plugin.type_url, version,
                                                                                plugin.payload_json(config)))}
            for plugin in plugins
        }

    return build


def with_overrides(settings: XdsService, args: argparse.Namespace) -> XdsService:
    """services.xds with the command line's listen overrides (replicas run from one config file)."""
    update = {field: value for field in ("address", "port", "admin_address", "admin_port", "metrics_port")
              if (value := getattr(args, field, None)) is not None}
    return settings.model_copy(update=update) if update else settings


async def run_service(given: dict[str, Any], config: GatewayConfig, config_path: Path, token: str,
                      file_ok: bool = True, settings: XdsService | None = None) -> None:
    settings = settings or config.services.xds
    nodes = NodePolicy.of(settings)
    key = nodes.gateway_key
    cache = SnapshotCache(nodes.key, MetricsCallbacks())
    config_dir = config_path.parent  # main() resolved it
    store = open_store(settings, config_path)
    digest = file_digest(config_path)
    try:
        initial = await initial_state(given, config, digest, store, config_path, file_ok)
    except StoreUnavailable as exc:
        raise SystemExit(f"xds_server: services.xds.store: {exc}") from None
    builder = SnapshotBuilder(plugin_resources(discover()))
    controller = Controller(cache, store, key, initial.config, initial.given, initial.version, digest,
                            settings.ack_timeout_ms / 1000, builder, loader=state_loader(config_path))
    # The snapshot exists before the first stream can open: a reconnecting Envoy never sees an empty one.
    await controller.start(initial.persist, initial.expected)
    tasks = []
    if store.shared:
        # Replicas: serve what the others commit (notifications), and read the store before answering a
        # new stream, so a client that comes from a replica further ahead never gets an older version.
        tasks += [asyncio.create_task(store.watch(controller.on_store_change)),
                  asyncio.create_task(controller.follow())]
    ads = AdsService(cache, admits=nodes.admits,
                     before_stream=(lambda node, version: controller.catch_up(version)) if store.shared else None)

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
        await store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xds_server", description="outrider xDS control plane")
    parser.add_argument("--config", required=True)
    # Overrides of services.xds, so several replicas (or pods) run from one config file.
    parser.add_argument("--address", help="ADS listen address (services.xds.address)")
    parser.add_argument("--port", type=_port, help="ADS port (services.xds.port)")
    parser.add_argument("--admin-address", help="admin API listen address (services.xds.admin_address)")
    parser.add_argument("--admin-port", type=_port, help="admin API port (services.xds.admin_port)")
    parser.add_argument("--metrics-port", type=_port, help="/metrics port (services.xds.metrics_port)")
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

    uvloop.run(run_service(given, config, path.resolve(), token, file_ok,
                           with_overrides(config.services.xds, args)))


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (1-65535)")
    return port
