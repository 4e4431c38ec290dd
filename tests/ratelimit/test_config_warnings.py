"""The in-memory store with several workers counts per worker: said at start and by `outrider validate`."""

from __future__ import annotations

from pathlib import Path

import pytest

from outrider.cli import main as cli_main
from outrider.config import load_config
from ratelimit_service.config_warnings import config_warnings
from tests.harness import example_config_dict, with_free_ports, write_config


def config_with(tmp_path: Path, workers: int, redis: bool) -> Path:
    data = with_free_ports(example_config_dict())
    data["services"]["ratelimit"]["workers"] = workers
    if redis:
        data["rate_limits"]["redis"] = {"url": "redis://127.0.0.1:6379/0"}
    return write_config(data, tmp_path / "gateway.yaml")


@pytest.mark.parametrize(("workers", "redis", "warns"), [(2, False, True), (1, False, False), (2, True, False)])
def test_memory_store_with_several_workers_warns(tmp_path: Path, workers: int, redis: bool, warns: bool) -> None:
    found = config_warnings(load_config(config_with(tmp_path, workers, redis)))
    assert bool(found) == warns
    if warns:
        assert "each worker keeps its own counters" in found[0] and "rate_limits.redis" in found[0]


def test_validate_prints_the_plugins_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Through the installed ratelimit plugin's optional `warnings` hook.
    path = config_with(tmp_path, 2, redis=False)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["validate", str(path)])
    assert exit_info.value.code == 0  # a warning, not an error
    out = capsys.readouterr()
    assert f"{path}: warning: services.ratelimit.workers is 2" in out.err
    assert "OK" in out.out


@pytest.mark.parametrize(("after", "warns"), [(10_000, False), (6_200, True)])
def test_a_ban_within_what_the_per_ip_limit_admits_warns(tmp_path: Path, after: int, warns: bool) -> None:
    # The example's 100/s with a burst of 200 admits 6,200 requests a minute.
    data = with_free_ports(example_config_dict())
    data["rate_limits"]["per_ip"]["ban"]["after_requests"] = after
    found = config_warnings(load_config(write_config(data, tmp_path / "gateway.yaml")))
    assert bool(found) == warns
    if warns:
        assert "admits up to 6200 requests per minute" in found[0]
