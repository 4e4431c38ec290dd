"""The rate limit service's resource: descriptor files travel by content, and the payload builds the same table."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from outrider.config import GatewayConfig, load_config
from outrider.plugins import ServicePlugin
from ratelimit_service.config import load_descriptor_file
from ratelimit_service.limits import compile_table
from ratelimit_service.plugin import PLUGIN
from ratelimit_service.resource import PayloadError, build, payload
from tests.harness import example_config_dict, with_free_ports, write_config

FIXTURES = Path(__file__).parent / "fixtures"
FILES = ["messaging.yaml", "edge.yaml", "features.yaml"]


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    (tmp_path / "limits").mkdir()
    for name in FILES:
        shutil.copy(FIXTURES / name, tmp_path / "limits" / name)
    data = with_free_ports(example_config_dict())
    data["rate_limits"]["files"] = [f"limits/{name}" for name in FILES]
    data["rate_limits"]["failure_mode"] = "deny"
    data["rate_limits"]["near_limit_ratio"] = 0.5
    return load_config(write_config(data, tmp_path / "gateway.yaml"))


def test_plugin_is_a_service_plugin(config: GatewayConfig) -> None:
    assert isinstance(PLUGIN, ServicePlugin)
    assert PLUGIN.name == "ratelimit"
    assert PLUGIN.type_url == "type.googleapis.com/outrider.config.v1.RateLimitServiceConfig"
    assert PLUGIN.payload(config) == payload(config)


def test_payload_is_json_deterministic_and_carries_the_files(config: GatewayConfig, tmp_path: Path) -> None:
    first = payload(config)
    assert json.loads(canonical(first)) == first
    assert canonical(payload(load_config(tmp_path / "gateway.yaml"))) == canonical(first)
    assert "files" not in first["rate_limits"]  # paths of the control plane's machine mean nothing here
    assert [f["name"] for f in first["files"]] == [str(tmp_path / "limits" / n) for n in FILES]
    assert first["files"][0]["config"]["domain"] == "messaging"
    assert first["logging"] == {"decisions": True}


def test_the_payload_builds_the_table_the_config_compiles_to(config: GatewayConfig, tmp_path: Path) -> None:
    data = json.loads(canonical(payload(config)))
    shutil.rmtree(tmp_path / "limits")  # the service reads no file: everything is in the payload
    built = build(data)
    assert config.rate_limits is not None
    files = [load_descriptor_file(FIXTURES / name) for name in FILES]
    today = compile_table(config.rate_limits, files)
    assert built.settings.table.domains == today.domains
    assert set(today.domains) == {"outrider", "messaging", "edge_proxy_per_ip", "features"}
    assert built.settings.failure_mode_deny is True and built.settings.near_ratio == 0.5
    assert built.rate_limits.redis is None and built.rate_limits.budget_ms == config.rate_limits.budget_ms
    match = built.settings.table.lookup("outrider", [("tier", "gold"), ("user_id", "u")])  # unknown_tier: free
    assert match is not None and match.limits[0].requests_per_unit == 60


def test_a_config_without_rate_limits_builds_an_empty_table(config: GatewayConfig) -> None:
    bare = config.model_copy(update={"rate_limits": None})
    data = payload(bare)
    assert data["rate_limits"] is None and data["files"] == []
    built = build(data)
    assert built.settings.table.domains == {}
    assert built.settings.failure_mode_deny is False


BAD: list[tuple[str, Any, str]] = [
    ("unknown key", lambda p: p.update(extra=1), "extra: Extra inputs are not permitted"),
    ("bad unit in a file", lambda p: p["files"][2]["config"]["descriptors"][1]["rate_limit"].update(unit="fortnight"),
     "features.yaml: descriptors.1.rate_limit.unit: Input should be"),
    ("unknown tier", lambda p: p["rate_limits"].update(unknown_tier="gold"), "no plan named 'gold'"),
    ("paths instead of content", lambda p: p["rate_limits"].update(files=["/etc/limits.yaml"]), "must be inlined"),
    ("clash", lambda p: p["files"].append(copy.deepcopy(p["files"][0])), "duplicate descriptor composite key"),
    ("bad ratio", lambda p: p["rate_limits"].update(near_limit_ratio=2), "rate_limits.near_limit_ratio"),
]


@pytest.mark.parametrize(("mutate", "reason"), [(m, r) for _, m, r in BAD], ids=[n for n, _, _ in BAD])
def test_a_bad_payload_is_refused_with_its_reason(config: GatewayConfig, mutate: Any, reason: str) -> None:
    data = copy.deepcopy(payload(config))
    mutate(data)
    with pytest.raises(PayloadError, match="invalid ratelimit payload") as info:
        build(data)
    assert reason in str(info.value)


def test_the_ban_admin_settings_travel_in_the_payload(tmp_path: Path) -> None:
    # Under the control plane the service reads no config file: its admin listener comes with the payload.
    data = with_free_ports(example_config_dict())
    assert build(payload(load_config(write_config(data, tmp_path / "a.yaml")))).admin is None
    data["services"]["ratelimit"].update({"admin_port": 19182, "admin_token_file": "secrets/ban-token"})
    built = build(json.loads(json.dumps(payload(load_config(write_config(data, tmp_path / "b.yaml"))))))
    assert built.admin is not None
    assert (built.admin.address, built.admin.port) == ("127.0.0.1", 19182)
    assert built.admin.token_env == "OUTRIDER_RATELIMIT_ADMIN_TOKEN"
    assert built.admin.token_file == tmp_path / "secrets" / "ban-token"  # relative to the config file
    ban = built.rate_limits.per_ip.ban if built.rate_limits.per_ip is not None else None
    assert ban is not None and (ban.after_requests, ban.window, ban.duration_s) == (10_000, "minute", 3600)
