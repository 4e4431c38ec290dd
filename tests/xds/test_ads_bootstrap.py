"""The committed ADS bootstraps are what `outrider envoy-bootstrap --ads` makes of the example, and Envoy takes them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from outrider.config import load_config
from outrider.envoy_ads import compile_ads_bootstrap
from outrider.supervisor import envoy_binary

ROOT = Path(__file__).parents[2]
FILES = {"sotw": ROOT / "envoy" / "bootstrap-xds.yaml", "delta": ROOT / "envoy" / "bootstrap-xds-delta.yaml"}


@pytest.mark.parametrize("protocol", sorted(FILES))
def test_committed_ads_bootstrap_matches_example(protocol: str) -> None:
    committed = yaml.safe_load(FILES[protocol].read_text())
    compiled = compile_ads_bootstrap(load_config(ROOT / "examples" / "gateway.yaml"), delta=protocol == "delta")
    assert committed == compiled, (
        f"run: outrider envoy-bootstrap examples/gateway.yaml --ads {protocol} -o {FILES[protocol]}"
    )
    assert committed["dynamic_resources"]["ads_config"]["api_type"] == ("DELTA_GRPC" if protocol == "delta" else "GRPC")


@pytest.mark.parametrize("protocol", sorted(FILES))
def test_envoy_accepts_the_ads_bootstrap(protocol: str) -> None:
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(FILES[protocol]), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
