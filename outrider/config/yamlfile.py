"""YAML read for config files: line tracking, duplicate keys refused, pydantic errors turned into ConfigIssues."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import ValidationError

from outrider.config.errors import ConfigError, ConfigIssue, Loc


class LineIndex:
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


def duplicate_keys(node: yaml.Node | None, loc: Loc = ()) -> list[ConfigIssue]:
    """PyYAML keeps the last of two equal keys silently; we refuse them."""
    issues: list[ConfigIssue] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            if name in seen:
                issues.append(ConfigIssue((*loc, name), "duplicate key", key.start_mark.line + 1))
            seen.add(name)
            issues.extend(duplicate_keys(value, (*loc, name)))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            issues.extend(duplicate_keys(item, (*loc, index)))
    return issues


def pydantic_issues(error: ValidationError, lines: LineIndex) -> list[ConfigIssue]:
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


def parse_mapping(text: str, filename: str, not_mapping: str) -> tuple[dict[str, Any], LineIndex]:
    """The YAML document as a dict, and its line index. Raises ConfigError (syntax, duplicate keys, or
    `not_mapping` when the document is not a mapping)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(filename, [ConfigIssue((), f"invalid YAML: {reason}", line)]) from None
    duplicates = duplicate_keys(root)
    if duplicates:
        raise ConfigError(filename, duplicates)
    if not isinstance(data, dict):
        raise ConfigError(filename, [ConfigIssue((), not_mapping, 1)])
    return data, LineIndex(root)


def read_text(path: Path) -> str:
    """The file's text; raises ConfigError naming the file when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [ConfigIssue((), f"cannot read file: {exc}")]) from None
