"""Persistence of the served config as given (the file's values plus accepted API changes), behind one interface.

The state is never a re-dump of the validated model: defaults filled in by a dump would count as set on the
next load and change what a route inherits (a restart once dropped the global transformations of every route
with its own section, and the bearer token reached the upstream). Save → load → compile is byte-identical.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

STATE_FILE = "state.json"
# Bumped when the state's shape changes; a state of another format is ignored (the config file wins).
FORMAT = 2

# Called with the version a store announces (None: "something may have changed", e.g. after a reconnect).
OnChange = Callable[[int | None], Awaitable[None]]


@dataclass(frozen=True)
class State:
    version: int
    file_digest: str  # digest of the config file this state was derived from
    given: dict[str, Any]  # the config as given: plain JSON values, validated again on every load


class Conflict(Exception):
    """A compare-and-set save found another version than the one the change was built on."""

    def __init__(self, expected: int | None, found: int | None) -> None:
        self.expected = expected
        self.found = found
        super().__init__(f"stored version is {found}, the change was built on {expected}")


class StoreUnavailable(Exception):
    """The store cannot be reached or answered with an error (Redis down): nothing was saved."""


def encode_state(state: State) -> str:
    return json.dumps(
        {"format": FORMAT, "version": state.version, "file_digest": state.file_digest, "given": state.given},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def decode_state(text: str | bytes) -> State | None:
    """A state from its JSON; None when it is of another format or malformed."""
    try:
        data: dict[str, Any] = json.loads(text)
        if data.get("format") != FORMAT or not isinstance(data.get("given"), dict):
            return None
        return State(int(data["version"]), str(data["file_digest"]), data["given"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class Store(Protocol):
    """Where the control plane keeps its last accepted state: a file (one replica) or Redis (replicas)."""

    # True when other control-plane replicas read and write the same state (changes are then persisted
    # before they are pushed: see xds_server/control.py).
    shared: bool

    async def load(self) -> State | None:
        """The last accepted state; None when there is none or it cannot be read."""
        ...

    async def stored_version(self) -> int | None:
        """The version of the stored state (cheap: no state is decoded); None when there is none."""
        ...

    async def save(self, state: State, expected: int | None) -> None:
        """Replace the state atomically, only if the stored version is `expected` (None: nothing stored);
        raises Conflict otherwise. A crash leaves the old or the new state, never a mix."""
        ...

    async def watch(self, on_change: OnChange) -> None:
        """Call on_change for every state another replica saves, until cancelled (returns at once if the
        store is not shared)."""
        ...

    async def close(self) -> None: ...


class FileStore:
    """One JSON state file, replaced atomically (temp file, fsync, rename, fsync of the folder).

    One control plane owns the folder: `expected` is not checked against the file (nobody else writes it).
    """

    shared = False

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> State | None:
        try:
            return decode_state(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write(self, state: State) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        text = encode_state(state)
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

    async def load(self) -> State | None:
        return self.read()

    async def stored_version(self) -> int | None:
        state = self.read()
        return None if state is None else state.version

    async def save(self, state: State, expected: int | None) -> None:
        self.write(state)

    async def watch(self, on_change: OnChange) -> None:
        return None

    async def close(self) -> None:
        return None


class MemoryStore:
    """A shared store in memory (tests of the replica logic): compare-and-set, and notifications that the
    test delivers (`notify`) or not, to play a slow or lost message."""

    shared = True

    def __init__(self) -> None:
        self.state: State | None = None
        self.saves = 0
        self._watchers: list[OnChange] = []

    async def load(self) -> State | None:
        return self.state

    async def stored_version(self) -> int | None:
        return None if self.state is None else self.state.version

    async def save(self, state: State, expected: int | None) -> None:
        found = None if self.state is None else self.state.version
        if found != expected:
            raise Conflict(expected, found)
        if found is not None and state.version <= found:
            raise ValueError(f"version {state.version} is not newer than the stored {found}")
        self.state = State(state.version, state.file_digest, json.loads(json.dumps(state.given)))
        self.saves += 1

    async def notify(self) -> None:
        version = None if self.state is None else self.state.version
        for watcher in list(self._watchers):
            await watcher(version)

    async def watch(self, on_change: OnChange) -> None:
        self._watchers.append(on_change)
        try:
            await asyncio.Event().wait()
        finally:
            self._watchers.remove(on_change)

    async def close(self) -> None:
        return None
