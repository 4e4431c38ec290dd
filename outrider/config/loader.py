"""Read a gateway config file: YAML with line tracking, model validation, cross-reference checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import ValidationError

from outrider.config.errors import ConfigError, ConfigIssue, Loc
from outrider.config.model import GatewayConfig
from outrider.config.semantic import check_references


class _LineIndex:
    """Maps a field path to the line of its YAML node, for error messages."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._root = root

    def line_of(self, loc: Loc) -> int | None:
        node = self._root
        best = node.start_mark.line + 1 if node is not None else None
        for part in loc:
            child = self._child(node, part)
            if child is None:
                break
            node = child
            best = node.start_mark.line + 1
        return best

    @staticmethod
    def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    return cast(yaml.Node, value)
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            return cast(yaml.Node, node.value[part])
        return None


def _duplicate_keys(node: yaml.Node | None, loc: Loc = ()) -> list[ConfigIssue]:
    """PyYAML keeps the last of two equal keys silently; we refuse them."""
    issues: list[ConfigIssue] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            if name in seen:
                issues.append(ConfigIssue((*loc, name), "duplicate key", key.start_mark.line + 1))
            seen.add(name)
            issues.extend(_duplicate_keys(value, (*loc, name)))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            issues.extend(_duplicate_keys(item, (*loc, index)))
    return issues


def _pydantic_issues(error: ValidationError, lines: _LineIndex) -> list[ConfigIssue]:
    issues = []
    for item in error.errors(include_url=False):
        # pydantic appends union-member and validator names to loc; keep only real field names.
        loc: Loc = tuple(p for p in item["loc"] if isinstance(p, int) or not str(p).startswith("function-"))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        issues.append(ConfigIssue(loc, message, lines.line_of(loc)))
    return issues


def load_config_text(text: str, filename: str = "<config>", base_dir: Path | None = None) -> GatewayConfig:
    """Parse and validate config text; relative paths resolve against base_dir. Raises ConfigError."""
    data, root = _parse(text, filename)
    return load_config_data(data, filename, base_dir, _LineIndex(root))


def parse_config_text(text: str, filename: str = "<config>") -> dict[str, Any]:
    """The config as given: YAML parsed into plain values (duplicate keys refused). Raises ConfigError."""
    return _parse(text, filename)[0]


def _parse(text: str, filename: str) -> tuple[dict[str, Any], yaml.Node | None]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(filename, [ConfigIssue((), f"invalid YAML: {reason}", line)]) from None
    duplicates = _duplicate_keys(root)
    if duplicates:
        raise ConfigError(filename, duplicates)
    if not isinstance(data, dict):
        raise ConfigError(filename, [ConfigIssue((), "the file must hold a mapping (key: value pairs)", 1)])
    return data, root


def load_config_data(data: Any, filename: str = "<config>", base_dir: Path | None = None,
                     lines: _LineIndex | None = None) -> GatewayConfig:
    """Validate a config given as plain values (the file as parsed, plus API changes). Raises ConfigError.

    The same rules as a file: model, paths resolved against base_dir, cross-references. `data` is not
    changed, so the caller can keep it as the config as given (what persistence stores).
    """
    lines = lines or _LineIndex(None)
    if not isinstance(data, dict):
        raise ConfigError(filename, [ConfigIssue((), "the config must be a mapping (key: value pairs)", 1)])
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(filename, _pydantic_issues(exc, lines)) from None
    config = _resolve_paths(config, base_dir or Path.cwd())
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
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [ConfigIssue((), f"cannot read file: {exc}")]) from None
    data, root = _parse(text, str(path))
    return data, load_config_data(data, str(path), path.resolve().parent, _LineIndex(root))


def _resolve_paths(config: GatewayConfig, base_dir: Path) -> GatewayConfig:
    providers = [
        p.model_copy(update={"jwks_file": base_dir / p.jwks_file})
        if p.jwks_file is not None and not p.jwks_file.is_absolute()
        else p
        for p in config.auth.providers
    ]
    config = config.model_copy(update={"auth": config.auth.model_copy(update={"providers": providers})})
    if config.rate_limits is not None and config.rate_limits.files:
        files = [f if f.is_absolute() else base_dir / f for f in config.rate_limits.files]
        config = config.model_copy(update={"rate_limits": config.rate_limits.model_copy(update={"files": files})})
    return config
