"""Persistence of the served config as given (the file's values plus accepted API changes), behind one interface.

The state is never a re-dump of the validated model: defaults filled in by a dump would count as set on the
next load and change what a route inherits (a restart once dropped the global transformations of every route
with its own section, and the bearer token reached the upstream). Save → load → compile is byte-identical.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

STATE_FILE = "state.json"
# Bumped when the state's shape changes; a state of another format is ignored (the config file wins).
FORMAT = 2


@dataclass(frozen=True)
class State:
    version: int
    file_digest: str  # digest of the config file this state was derived from
    given: dict[str, Any]  # the config as given: plain JSON values, validated again on every load


class Store(Protocol):
    """Where the control plane keeps its last accepted state (a file now; a shared store for replicas)."""

    def load(self) -> State | None:
        """The last accepted state; None when there is none or it cannot be read."""
        ...

    def save(self, state: State) -> None:
        """Replace the state atomically: a crash leaves the old or the new one, never a mix."""
        ...


class FileStore:
    """One JSON state file, replaced atomically (temp file, fsync, rename, fsync of the folder)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> State | None:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT or not isinstance(data.get("given"), dict):
                return None
            return State(int(data["version"]), str(data["file_digest"]), data["given"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, state: State) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(
            {"format": FORMAT, "version": state.version, "file_digest": state.file_digest, "given": state.given},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # The rename itself must survive a crash too.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
