"""Rate limit config errors: one bad fixture per rule, reported with file, field path, line and reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from outrider.config import ConfigError, load_config
from ratelimit_service.config import load_descriptor_file
from tests.harness import EXAMPLE_CONFIG, example_config_dict

FIXTURES = Path(__file__).parent / "fixtures"


def _expectation(path: Path) -> tuple[str, str]:
    first = path.read_text().splitlines()[0]
    match = re.match(r"# expect: (\S+) \| (.+)$", first)
    assert match, f"{path} needs a first line '# expect: <field> | <reason>'"
    return match.group(1), match.group(2)


def _assert_reported(error: ConfigError, path: Path, field: str, reason: str) -> None:
    rendered = str(error).splitlines()
    pattern = re.compile(rf"^{re.escape(str(path))}:\d+: {re.escape(field)}: ")
    assert any(pattern.match(r) and reason in r for r in rendered), rendered


@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "bad_files").glob("*.yaml")))
def test_bad_descriptor_file(name: str) -> None:
    path = FIXTURES / "bad_files" / name
    field, reason = _expectation(path)
    with pytest.raises(ConfigError) as caught:
        load_descriptor_file(path)
    _assert_reported(caught.value, path, field, reason)


def _gateway_with(fragment: Path, tmp_path: Path) -> Path:
    data = example_config_dict()
    text = fragment.read_text().replace("FIXTURES/", f"{FIXTURES}/")
    data.update(yaml.safe_load(text))
    for provider in data["auth"]["providers"]:
        provider["jwks_file"] = str(EXAMPLE_CONFIG.parent / provider["jwks_file"])
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "bad_gateway").glob("*.yaml")))
def test_bad_rate_limits_section(name: str, tmp_path: Path) -> None:
    fragment = FIXTURES / "bad_gateway" / name
    field, reason = _expectation(fragment)
    path = _gateway_with(fragment, tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    _assert_reported(caught.value, path, field, reason)


def test_good_descriptor_files_load() -> None:
    for name in ("messaging.yaml", "edge.yaml", "features.yaml"):
        assert load_descriptor_file(FIXTURES / name).descriptors


def test_relative_files_resolve_against_the_gateway_file(tmp_path: Path) -> None:
    (tmp_path / "limits").mkdir()
    (tmp_path / "limits" / "edge.yaml").write_text((FIXTURES / "edge.yaml").read_text())
    data = example_config_dict()
    data["rate_limits"]["files"] = ["limits/edge.yaml"]
    for provider in data["auth"]["providers"]:
        provider["jwks_file"] = str(EXAMPLE_CONFIG.parent / provider["jwks_file"])
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(path)
    assert config.rate_limits is not None
    assert config.rate_limits.files == [tmp_path / "limits" / "edge.yaml"]
