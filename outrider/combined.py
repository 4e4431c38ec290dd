"""`python -m outrider.combined --config FILE`: the services in ONE process, each on its own port.

The same runtimes, config sources and servers as one process per service (outrider/service_main.py), on
one event loop: Envoy's config does not change (each gRPC cluster still points at its service's port).
It trades isolation for fewer processes: a crash, a stuck event loop or a leak in one service takes the
others with it, and the services share one core. bench/transport_bench.py measures both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import signal
from pathlib import Path
from typing import Any

from outrider.config import ConfigError, GatewayConfig, load_config
from outrider.logs import setup_logging
from outrider.plugins import ordered_plugins
from outrider.service_main import FileSource, ServiceSpec, run_service


def hosted_specs(config: GatewayConfig, config_path: Path) -> list[ServiceSpec]:
    """The services this config runs (a plugin with no process for it is left out), in filter order."""
    specs = []
    for plugin in ordered_plugins():
        path = getattr(plugin, "service_spec_path", None)
        if path is not None and plugin.processes(config, config_path):
            module, _, name = path.partition(":")
            spec = getattr(importlib.import_module(module), name)
            assert isinstance(spec, ServiceSpec), path
            specs.append(spec)
    return specs


async def run_combined(specs: list[ServiceSpec], config: GatewayConfig, config_path: Path,
                       envoy_admin: str | None = None) -> None:
    """Serve every spec until SIGTERM/SIGINT, which drains them all together."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runs: list[Any] = []
    for index, spec in enumerate(specs):
        settings = spec.settings_from(config)
        # One /metrics for the process: the default registry holds every service's families, so the first
        # service's port serves them all (a second server would repeat every series).
        settings = dataclasses.replace(settings, metrics_port=settings.metrics_port if index == 0 else 0,
                                       envoy_admin=envoy_admin if index == 0 else None)
        runs.append(run_service(spec, settings, FileSource(spec, config_path, config), stop=stop))
    await asyncio.gather(*runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m outrider.combined", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the gateway config file (watched)")
    parser.add_argument("--envoy-admin", metavar="URL",
                        help="also serve the gateway's metrics derived from this Envoy admin's stats on /metrics")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    specs = hosted_specs(config, args.config)
    if not specs:
        raise SystemExit(f"{args.config}: no outrider service to run")
    setup_logging("outrider", config.logging.level)
    import uvloop

    uvloop.run(run_combined(specs, config, args.config, args.envoy_admin))


if __name__ == "__main__":
    main()
