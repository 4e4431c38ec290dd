"""Read a gateway config file: YAML with line tracking, model validation, cross-reference checks."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from outrider.config.errors import ConfigError, ConfigIssue
from outrider.config.model import GatewayConfig
from outrider.config.schema import config_from_data
from outrider.config.semantic import check_references
from outrider.config.yamlfile import parse_mapping, pydantic_issues, read_text


def load_config_text(text: str, filename: str = "<config>", base_dir: Path | None = None) -> GatewayConfig:
    """Parse and validate config text; relative paths resolve against base_dir. Raises ConfigError."""
    data, lines = parse_mapping(text, filename, "the file must hold a mapping (key: value pairs)")
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
    path = Path(path)
    return load_config_text(read_text(path), str(path), path.resolve().parent)
