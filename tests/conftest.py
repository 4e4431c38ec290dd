"""Shared fixtures: a real gateway stack on free ports, stopped even when a test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Stack, example_config_dict, with_free_ports, write_config


def start_stack(workdir: Path, data: dict | None = None) -> Stack:  # type: ignore[type-arg]
    data = with_free_ports(data or example_config_dict())
    config_path = write_config(data, workdir / "gateway.yaml")
    stack = Stack(config_path, data, workdir)
    try:
        return stack.start()
    except BaseException:
        stack.stop()
        raise


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One shared stack per test module (read-only tests)."""
    running = start_stack(tmp_path_factory.mktemp("stack"))
    yield running
    running.stop()


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack of the test's own, for tests that kill or reconfigure parts of it."""
    running = start_stack(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[str]:
    """A fresh redis-server of the test's own; yields its URL."""
    from tests.redis_harness import redis_process, redis_url

    proc = redis_process(tmp_path / "redis").start().wait_ready(10)
    yield redis_url(proc)
    proc.stop()


# A scripted ADS server (tests/kernel/ads_script.py), for the services' --xds mode tests.
from tests.kernel.ads_script import ads  # noqa: E402, F401 - a fixture, found by pytest through this conftest
