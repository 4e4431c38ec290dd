"""Reading a table of a previous bench/RESULTS.md back (the "before" of a before → after comparison)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

Row = dict[str, str]


@dataclass(frozen=True)
class Previous:
    """One table of an earlier results file: its rows by (scenario, gRPC servers), and the run's date."""

    path: Path
    date: str
    rows: dict[tuple[str, str], Row]


def number(cell: str) -> float | None:
    """'2,948 (0.97×)' → 2948.0; '—' or '' → None (the leading figure of a cell, thousands commas dropped)."""
    found = re.match(r"\s*(-?[\d,]*\.?\d+)", cell)
    return float(found.group(1).replace(",", "")) if found else None


def read_table(text: str, title_prefix: str) -> list[Row]:
    """The rows of the markdown table under the first `## <title_prefix>…` heading, as header → cell."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"## {title_prefix}")), None)
    if start is None:
        return []
    table = _block_after(lines, start + 1)
    if len(table) < 2:
        return []
    headers = _cells(table[0])
    return [dict(zip(headers, _cells(line), strict=True)) for line in table[2:]]  # table[1] is |---|


def _block_after(lines: list[str], index: int) -> list[str]:
    """The contiguous `|`-lines of the first table at or after `index` (blank lines before it skipped)."""
    while index < len(lines) and not lines[index].startswith("|"):
        if lines[index].startswith("## "):
            return []  # the next section: the heading had no table
        index += 1
    block = []
    while index < len(lines) and lines[index].startswith("|"):
        block.append(lines[index])
        index += 1
    return block


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def read_previous(path: Path, title_prefix: str) -> Previous:
    """The table `title_prefix` of the results file at `path`, keyed by (scenario, gRPC servers)."""
    text = path.read_text()
    found = re.search(r"^- \*\*Date:\*\* (.+)$", text, re.MULTILINE)
    rows = {(row["scenario"], row["gRPC servers"]): row for row in read_table(text, title_prefix)
            if "scenario" in row and "gRPC servers" in row}
    return Previous(path, found.group(1).strip() if found else "?", rows)
