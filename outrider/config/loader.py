"""Read a gateway config file: YAML with line tracking, model validation, cross-reference checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from outrider.config.errors import ConfigError, ConfigIssue
from outrider.config.model import GatewayConfig
from outrider.config.schema import config_from_data
from outrider.config.semantic import check_references
from outrider.config.yamlfile import LineIndex, parse_mapping, pydantic_issues, read_text

NOT_MAPPING = "the file must hold a mapping (key: value pairs)"


def load_config_text(text: str, filename: str = "<config>", base_dir: Path | None = None) -> GatewayConfig:
    """Parse and validate config text; relative paths resolve against base_dir. Raises ConfigError."""
    data, lines = parse_mapping(text, filename, NOT_MAPPING)
    return load_config_data(data, filename, base_dir, lines)


def parse_config_text(text: str, filename: str = "<config>") -> dict[str, Any]:
    """The config as given: YAML parsed into plain values (duplicate keys refused). Raises ConfigError."""
    return parse_mapping(text, filename, NOT_MAPPING)[0]


def load_config_data(data: Any, filename: str = "<config>", base_dir: Path | None = None,
                     lines: LineIndex | None = None) -> GatewayConfig:
    """Validate a config given as plain values (the file as parsed, plus API changes). Raises ConfigError.

    The same rules as a file: model, paths resolved against base_dir, cross-references. `data` is not
    changed, so the caller can keep it as the config as given (what persistence stores).
    """
    lines = lines or LineIndex(None)
    if not isinstance(data, dict):
        raise ConfigError(filename, [ConfigIssue((), "the config must be a mapping (key: value pairs)", 1)])
    try:
        config = config_from_data(data, base_dir or Path.cwd())
    except ValidationError as exc:
        raise ConfigError(filename, pydantic_issues(exc, lines)) from None
    problems = [ConfigIssue(loc, msg, lines.line_of(loc)) for loc, msg in check_references(config)]
    if problems:
        raise ConfigError(filename, problems)
    return config


def load_config(path: str | Path) -> GatewayConfig:
    """Load a config file; raises ConfigError naming the file, the field, the line and the reason."""
    return load_config_given(path)[1]


def load_config_given(path: str | Path) -> tuple[dict[str, Any], GatewayConfig]:
    """(the config as given, the validated config) of a file; raises ConfigError like load_config."""
    path = Path(path)
    data, lines = parse_mapping(read_text(path), str(path), NOT_MAPPING)
    return data, load_config_data(data, str(path), path.resolve().parent, lines)
