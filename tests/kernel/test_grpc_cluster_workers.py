"""Envoy's clusters to outrider's gRPC services follow `services.<svc>.workers`: several workers on one
SO_REUSEPORT port get connections recycled and few streams per connection, so the kernel spreads them."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from outrider.config import load_config
from outrider.envoy_config import compile_bootstrap
from outrider.supervisor import envoy_binary

ROOT = Path(__file__).parents[2]
SERVICE_CLUSTERS = {"outrider_ext_authz", "outrider_ratelimit", "outrider_ext_proc"}


def _bootstrap(tmp_path: Path, workers: int) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "examples" / "gateway.yaml").read_text())
    for name in ("ext_authz", "ratelimit", "ext_proc"):
        data["services"][name]["workers"] = workers
    for provider in data["auth"]["providers"]:
        provider["jwks_file"] = str(ROOT / "examples" / provider["jwks_file"])
    path = tmp_path / f"gateway-w{workers}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    bootstrap: dict[str, Any] = compile_bootstrap(load_config(path))
    return bootstrap


def _protocol_options(bootstrap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            for c in bootstrap["static_resources"]["clusters"] if c["name"] in SERVICE_CLUSTERS}


def test_one_worker_keeps_plain_multiplexing(tmp_path: Path) -> None:
    options = _protocol_options(_bootstrap(tmp_path, 1))
    assert set(options) == SERVICE_CLUSTERS
    for found in options.values():
        assert found["explicit_http_config"] == {"http2_protocol_options": {}}
        assert "common_http_protocol_options" not in found


def test_several_workers_get_connections_dealt_again(tmp_path: Path) -> None:
    options = _protocol_options(_bootstrap(tmp_path, 2))
    assert set(options) == SERVICE_CLUSTERS
    for found in options.values():
        assert found["common_http_protocol_options"]["max_requests_per_connection"] > 0
        assert found["explicit_http_config"]["http2_protocol_options"]["max_concurrent_streams"] > 0


def test_envoy_accepts_the_workers_settings(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap-w2.yaml"
    path.write_text(yaml.safe_dump(_bootstrap(tmp_path, 2), sort_keys=False))
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
