"""Config errors that carry the file, the field path, the line and the reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Loc = tuple[str | int, ...]


def format_loc(loc: Loc) -> str:
    """Render ('routes', 2, 'upstream') as routes[2].upstream."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "<root>"


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a config file."""

    loc: Loc
    message: str
    line: int | None = None

    def render(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line is not None else filename
        return f"{where}: {format_loc(self.loc)}: {self.message}"


class ConfigError(Exception):
    """A config file was rejected; `issues` lists every problem found."""

    def __init__(self, filename: str, issues: Sequence[ConfigIssue]) -> None:
        self.filename = filename
        self.issues = tuple(issues)
        super().__init__("\n".join(issue.render(filename) for issue in self.issues))


# A rule a parsed config breaks: the field path and the reason (the loader adds file and line).
Problem = tuple[Loc, str]
