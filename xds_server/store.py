"""Persistence of the served config: one JSON state file, replaced atomically (temp file, fsync, rename)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from outrider.config.model import GatewayConfig
from outrider.config.schema import config_from_data

STATE_FILE = "state.json"


@dataclass(frozen=True)
class State:
    version: int
    file_digest: str  # digest of the config file this state was derived from
    config: GatewayConfig


class Store:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE

    def load(self) -> State | None:
        """The last accepted state; None when there is none (or it is unreadable: the file config wins)."""
        try:
            data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
            return State(
                int(data["version"]), str(data["file_digest"]), config_from_data(data["config"])
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, ValidationError):
            return None

    def save(self, state: State) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(
            {
                "version": state.version,
                "file_digest": state.file_digest,
                "config": state.config.model_dump(mode="json"),
            },
            separators=(",", ":"),
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
