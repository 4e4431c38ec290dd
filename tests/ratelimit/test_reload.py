"""Standalone reload through the kernel watcher: the gateway file and its descriptor files are watched, a valid
change is swapped in whole, an invalid one is refused with file, field and reason, and the store stays."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from outrider.config import load_config
from outrider.service_main import FileSource, counted
from outrider.xds_client import ConfigRejected
from ratelimit_service.app import SPEC, RateLimitRuntime
from ratelimit_service.backends.memory import MemoryBackend
from ratelimit_service.limits import LimitTable
from ratelimit_service.resource import payload
from tests.harness import example_config_dict, with_free_ports

EXTRA = """
domain: extra
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: RPU}
"""


def write(path: Path, text: str) -> None:
    path.write_text(text)
    # Move mtime on explicitly: two writes within the clock's granularity must still look different.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def limit(table: LimitTable, domain: str, *entries: tuple[str, str]) -> int:
    match = table.lookup(domain, entries)
    assert match is not None
    return match.limits[0].requests_per_unit


@pytest.fixture
async def runtime() -> Any:
    live = RateLimitRuntime()
    yield live
    await live.close()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    data = with_free_ports(example_config_dict())
    data["rate_limits"]["files"] = ["extra.yaml"]
    extra = tmp_path / "extra.yaml"
    write(extra, EXTRA.replace("RPU", "5"))
    gateway = tmp_path / "gateway.yaml"
    write(gateway, yaml.safe_dump(data))
    return gateway, extra, data


async def test_changes_are_swapped_in_and_bad_ones_refused(
        setup: tuple[Path, Path, dict[str, Any]], runtime: RateLimitRuntime, caplog: pytest.LogCaptureFixture) -> None:
    gateway, extra, data = setup
    source = FileSource(SPEC, gateway, load_config(gateway))
    await source.start(counted("ratelimit", runtime.apply))
    service = runtime.service
    assert limit(service.settings.table, "extra", ("k", "v")) == 5
    assert not await source.poll()  # nothing changed

    write(extra, EXTRA.replace("RPU", "7"))  # only the descriptor file: watched beside the config
    assert await source.poll()
    assert limit(service.settings.table, "extra", ("k", "v")) == 7

    data["rate_limits"]["tiers"]["free"][0]["requests_per_unit"] = 30
    write(gateway, yaml.safe_dump(data))
    assert await source.poll()
    assert limit(service.settings.table, "outrider", ("tier", "free"), ("user_id", "u")) == 30
    good = service.settings

    caplog.set_level(logging.ERROR, logger="outrider.service")
    write(extra, EXTRA.replace("RPU", "7").replace("minute", "fortnight"))
    assert not await source.poll()
    assert service.settings is good  # the previous table stays live
    record = caplog.records[-1]
    assert record.file == str(gateway)  # type: ignore[attr-defined]
    issue = record.issues[0]  # type: ignore[attr-defined]
    assert issue["field"] == "rate_limits.files[0]"
    assert str(extra) in issue["reason"] and "descriptors[0].rate_limit.unit" in issue["reason"]

    data["rate_limits"]["unknown_tier"] = "gold"
    write(extra, EXTRA.replace("RPU", "9"))
    write(gateway, yaml.safe_dump(data))
    assert not await source.poll()
    assert caplog.records[-1].issues[0]["field"] == "rate_limits.unknown_tier"  # type: ignore[attr-defined]
    assert service.settings is good

    del data["rate_limits"]["unknown_tier"]
    write(gateway, yaml.safe_dump(data))
    assert await source.poll()  # fixed: both changes go live together
    assert limit(service.settings.table, "extra", ("k", "v")) == 9


async def test_a_refused_payload_keeps_the_table_and_a_new_store_waits_for_a_restart(
        setup: tuple[Path, Path, dict[str, Any]], runtime: RateLimitRuntime,
        caplog: pytest.LogCaptureFixture) -> None:
    gateway, _, _ = setup
    config = load_config(gateway)
    first = payload(config)
    await runtime.apply("v1", first)
    backend, live = runtime.backend, runtime.service.settings
    assert isinstance(backend, MemoryBackend) and runtime.version == "v1"

    bad = copy.deepcopy(first)
    bad["files"][0]["config"]["descriptors"][0]["rate_limit"]["unit"] = "fortnight"
    with pytest.raises(ConfigRejected, match=r"extra\.yaml: descriptors\.0\.rate_limit\.unit"):
        await runtime.apply("v2", bad)
    assert runtime.service.settings is live and runtime.version == "v1"

    caplog.set_level(logging.WARNING, logger="ratelimit_service")
    redis = copy.deepcopy(first)
    redis["rate_limits"]["redis"] = {"url": "redis://127.0.0.1:1/0"}
    redis["rate_limits"]["near_limit_ratio"] = 0.5
    await runtime.apply("v3", redis)
    assert runtime.backend is backend  # counters live on in the running store
    assert runtime.service.settings.near_ratio == 0.5 and runtime.version == "v3"
    assert any("rate_limits.redis changed" in r.getMessage() for r in caplog.records)
