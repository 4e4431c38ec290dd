"""Detect real changes to a set of files: cheap stat polling, content digest only when a stat moved."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

Stat = tuple[int, int] | None


def _stat(path: Path) -> Stat:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def digest_of(paths: Sequence[Path]) -> str:
    """One SHA-256 over the files' contents (a missing file hashes as a marker, not an error)."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            if path.is_dir():
                # A watched directory stands for its listing: a file added or removed is a change.
                digest.update("\0".join(sorted(p.name for p in path.iterdir())).encode())
            else:
                digest.update(path.read_bytes())
        except OSError:
            digest.update(b"\0missing\0")
        digest.update(b"\0")
    return digest.hexdigest()


class FileChangeDetector:
    """`changed()` is True once per real content change of the watched files (touching a file is not one)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.watch(paths)

    def watch(self, paths: Sequence[Path]) -> None:
        """Watch these files from now on, taking their present content as the baseline."""
        self._paths = list(paths)
        self._stats = [_stat(p) for p in self._paths]
        self.digest = digest_of(self._paths)

    @property
    def paths(self) -> list[Path]:
        return list(self._paths)

    def changed(self) -> bool:
        stats = [_stat(p) for p in self._paths]
        if stats == self._stats:
            return False
        self._stats = stats
        digest = digest_of(self._paths)
        if digest == self.digest:
            return False
        self.digest = digest
        return True
