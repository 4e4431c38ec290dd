"""Hot reload: a valid change goes live, an invalid one is refused with file, field and reason."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

from outrider.config import GatewayConfig, load_config
from ratelimit_service.limits import LimitTable
from ratelimit_service.reload import ConfigWatcher, build_table
from tests.harness import EXAMPLE_CONFIG, example_config_dict

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


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, dict]:  # type: ignore[type-arg]
    data = example_config_dict()
    for provider in data["auth"]["providers"]:
        provider["jwks_file"] = str(EXAMPLE_CONFIG.parent / provider["jwks_file"])
    data["rate_limits"]["files"] = ["extra.yaml"]
    extra = tmp_path / "extra.yaml"
    write(extra, EXTRA.replace("RPU", "5"))
    gateway = tmp_path / "gateway.yaml"
    write(gateway, yaml.safe_dump(data))
    return gateway, extra, data


def limit(table: LimitTable, domain: str, *entries: tuple[str, str]) -> int:
    match = table.lookup(domain, entries)
    assert match is not None
    return match.limits[0].requests_per_unit


def test_changes_are_swapped_in_and_bad_ones_refused(setup: tuple[Path, Path, dict],  # type: ignore[type-arg]
                                                     caplog: pytest.LogCaptureFixture) -> None:
    gateway, extra, data = setup
    config = load_config(gateway)
    live: list[LimitTable] = [build_table(config)]

    def on_change(new: GatewayConfig, table: LimitTable) -> None:
        live.append(table)

    watcher = ConfigWatcher(gateway, config, on_change)
    assert not watcher.poll()  # nothing changed

    write(extra, EXTRA.replace("RPU", "7"))
    assert watcher.poll()
    assert limit(live[-1], "extra", ("k", "v")) == 7

    data["rate_limits"]["tiers"]["free"][0]["requests_per_unit"] = 30
    write(gateway, yaml.safe_dump(data))
    assert watcher.poll()
    assert limit(live[-1], "outrider", ("tier", "free"), ("user_id", "u")) == 30

    caplog.set_level(logging.ERROR, logger="ratelimit_service.reload")
    write(extra, EXTRA.replace("RPU", "7").replace("minute", "fortnight"))
    assert not watcher.poll()
    assert len(live) == 3  # the previous table stays live
    record = caplog.records[-1]
    assert record.file == str(gateway)  # type: ignore[attr-defined]
    issue = record.issues[0]  # type: ignore[attr-defined]
    assert issue["field"] == "rate_limits.files[0]"
    assert str(extra) in issue["reason"] and "descriptors[0].rate_limit.unit" in issue["reason"]

    data["rate_limits"]["unknown_tier"] = "gold"
    write(extra, EXTRA.replace("RPU", "9"))
    write(gateway, yaml.safe_dump(data))
    assert not watcher.poll()
    assert caplog.records[-1].issues[0]["field"] == "rate_limits.unknown_tier"  # type: ignore[attr-defined]

    del data["rate_limits"]["unknown_tier"]
    write(gateway, yaml.safe_dump(data))
    assert watcher.poll()  # fixed: both changes go live together
    assert limit(live[-1], "extra", ("k", "v")) == 9


def test_an_unchanged_content_with_a_new_mtime_is_not_reloaded(setup: tuple[Path, Path, dict]) -> None:  # type: ignore[type-arg]
    gateway, extra, _ = setup
    calls = []
    watcher = ConfigWatcher(gateway, load_config(gateway), lambda c, t: calls.append(t))
    write(extra, extra.read_text())
    assert not watcher.poll() and not calls
