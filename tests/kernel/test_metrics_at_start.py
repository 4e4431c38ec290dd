"""Metrics are created when a service starts, in the registry it is given, never as a side effect of an import."""

from __future__ import annotations

import json
import subprocess
import sys

from prometheus_client import REGISTRY, CollectorRegistry

from ext_authz.metrics import service_metrics as authz_metrics
from ext_proc.metrics import service_metrics as ext_proc_metrics
from ratelimit_service.metrics import service_metrics as ratelimit_metrics
from tests.harness import ROOT
from xds_server.metrics import service_metrics as xds_metrics

FACTORIES = (authz_metrics, ratelimit_metrics, ext_proc_metrics, xds_metrics)

IMPORT_EVERYTHING = """
import importlib, json, pkgutil
for name in ("outrider", "ext_authz", "ratelimit_service", "ext_proc", "xds_server"):
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(package.__path__, name + "."):
        if not info.name.endswith("__main__"):  # __main__ would run the service
            importlib.import_module(info.name)
from prometheus_client import REGISTRY
print(json.dumps(sorted(f.name for f in REGISTRY.collect())))
"""


def declared() -> set[str]:
    registry = CollectorRegistry()
    for factory in FACTORIES:
        factory(registry)
    return {family.name for family in registry.collect()}


def test_importing_every_module_registers_no_metric() -> None:
    # A fresh interpreter: this test process has already built metrics on purpose.
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, cwd=ROOT,
                            timeout=120, check=True)
    registered = set(json.loads(result.stdout.splitlines()[-1]))
    ours = declared()
    assert len(ours) > 20
    assert not ours & registered, f"registered at import: {sorted(ours & registered)}"


def test_metrics_are_built_once_per_registry() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    for factory in FACTORIES:
        assert factory(first) is factory(first)  # a second caller shares them (no duplicate registration)
        assert factory(first) is not factory(second)
        assert factory() is factory(REGISTRY)  # the default is the process registry, the same objects
