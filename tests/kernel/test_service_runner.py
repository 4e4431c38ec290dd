"""The two-mode service runner: command line → start-up settings, and the one file watcher of standalone mode."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from outrider.config import load_config
from outrider.service_main import FileSource, ServiceSpec, StartupSettings, XdsSource, counted, startup
from outrider.service_resource import EXT_PROC_TYPE_URL
from outrider.xds_client import ConfigRejected
from tests.harness import example_config_dict, with_free_ports, write_config


class RoutesPlugin:
    """Its payload: the route names (and the listener port, to show a refused change)."""

    name = "ext_proc"
    type_url = EXT_PROC_TYPE_URL

    def payload(self, config: Any) -> Mapping[str, Any]:
        return {"routes": [r.name for r in config.routes]}


class Runtime:
    def __init__(self, _settings: StartupSettings | None = None) -> None:
        self.live: tuple[str, Mapping[str, Any]] | None = None
        self.health_names = ()

    def register(self, server: Any) -> None:
        pass

    async def apply(self, version: str, payload: Mapping[str, Any]) -> None:
        if "refused" in payload["routes"]:
            raise ConfigRejected("a route named 'refused' is not allowed")
        self.live = (version, payload)

    async def close(self) -> None:
        pass


SPEC = ServiceSpec(RoutesPlugin(), "test service", Runtime)


def reloads(result: str) -> float:
    return REGISTRY.get_sample_value("outrider_config_reloads_total", {"service": "ext_proc", "result": result}) or 0


def test_standalone_settings_come_from_the_file(tmp_path: Path) -> None:
    data = with_free_ports(example_config_dict())
    path = write_config(data, tmp_path / "gateway.yaml")
    settings, source = startup(SPEC, ["--config", str(path)])
    section = data["services"]["ext_proc"]
    assert settings == StartupSettings("ext_proc", section.get("address", "127.0.0.1"), section["port"],
                                       section["metrics_port"], "info")
    assert isinstance(source, FileSource)


def test_control_plane_settings_come_from_flags(capsys: pytest.CaptureFixture[str]) -> None:
    settings, source = startup(SPEC, ["--xds", "127.0.0.1:18000", "--node-id", "gw/ext_proc", "--node-cluster",
                                      "outrider", "--port", "1234", "--metrics-port", "1235"])
    assert settings == StartupSettings("ext_proc", "127.0.0.1", 1234, 1235, "info")
    assert isinstance(source, XdsSource)
    with pytest.raises(SystemExit):
        startup(SPEC, ["--xds", "127.0.0.1:18000", "--node-id", "gw/ext_proc"])
    assert "--xds needs --node-cluster, --port, --metrics-port" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # one mode or the other
        startup(SPEC, ["--xds", "x:1", "--config", "gateway.yaml"])


async def test_file_watcher_swaps_valid_changes_and_keeps_the_last_good(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = with_free_ports(example_config_dict())
    path = write_config(data, tmp_path / "gateway.yaml")
    runtime = Runtime()
    source = FileSource(SPEC, path, load_config(path))
    await source.start(counted("ext_proc", runtime.apply))
    assert source.ready.is_set() and runtime.live is not None
    first_version, first = runtime.live
    assert first == RoutesPlugin().payload(load_config(path))
    applied, rejected = reloads("applied"), reloads("rejected")

    changed = copy.deepcopy(data)
    changed["routes"].append({"name": "added", "match": {"prefix": "/added/"}, "upstream": "demo", "public": True})
    write_config(changed, path)
    assert await source.poll()
    assert runtime.live[1]["routes"][-1] == "added" and runtime.live[0] != first_version
    assert reloads("applied") == applied + 1
    good = runtime.live

    path.write_text(path.read_text() + "\nroutes: [oops\n")             # YAML that does not parse
    assert not await source.poll()
    assert runtime.live == good and reloads("rejected") == rejected + 1
    assert any(r.getMessage().startswith("config change rejected") and r.file == str(path)  # type: ignore[attr-defined]
               for r in caplog.records)

    caplog.clear()
    bad_field = copy.deepcopy(changed)
    bad_field["routes"][0]["timeout_ms"] = -1                            # a field the model refuses
    write_config(bad_field, path)
    assert not await source.poll()
    issues = [r.issues for r in caplog.records if hasattr(r, "issues")]  # type: ignore[attr-defined]
    assert issues and issues[0][0]["field"] == "routes[0].timeout_ms" and issues[0][0]["line"] is not None
    assert runtime.live == good and reloads("rejected") == rejected + 2

    refused = copy.deepcopy(changed)
    refused["routes"].append({"name": "refused", "match": {"prefix": "/r/"}, "upstream": "demo", "public": True})
    write_config(refused, path)
    assert not await source.poll()                                      # the runtime said no
    assert runtime.live == good and reloads("rejected") == rejected + 3

    other = copy.deepcopy(changed)
    other["logging"]["level"] = "debug"                                 # not this service's part
    write_config(other, path)
    assert not await source.poll()
    assert runtime.live == good and reloads("applied") == applied + 1

    assert not await source.poll()                                      # nothing changed since


async def test_a_first_config_the_runtime_refuses_ends_the_service(tmp_path: Path) -> None:
    data = with_free_ports(example_config_dict())
    data["routes"].append({"name": "refused", "match": {"prefix": "/r/"}, "upstream": "demo", "public": True})
    path = write_config(data, tmp_path / "gateway.yaml")
    source = FileSource(SPEC, path, load_config(path))
    with pytest.raises(SystemExit, match="a route named 'refused' is not allowed"):
        await source.start(Runtime().apply)
    assert not source.ready.is_set()
