"""A set of envoyproxy/ratelimit descriptor files (files and directories) loaded as one config, each read whole."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from outrider.config.errors import ConfigError, ConfigIssue, Problem
from ratelimit_service.config import (
    FAILURE_MODE_KEY,
    DescriptorFile,
    RateLimitsConfig,
    generated_keys,
    parse_descriptor_file,
    rl_has_generated,
)

# A file modified less than this long ago may still be being written: wait that long and look again.
# The reference's loader has the same exposure and relies on writers swapping a symlink (its
# RUNTIME_WATCH_ROOT default, and what a Kubernetes ConfigMap mount does); an editor or `cp` writes in place.
SETTLE_S = 0.05
# Reads of one file that found it changing before giving up (the set is refused; the old config stays).
READ_ATTEMPTS = 6


@dataclass(frozen=True)
class LoadedFile:
    """One descriptor file of a set: its path (as named in messages) and its parsed content."""

    name: str
    config: DescriptorFile


def _hidden(name: str) -> bool:
    # The reference with RUNTIME_IGNOREDOTFILES=true, the setting its docs prescribe for Kubernetes: a
    # ConfigMap mount keeps a second copy of every file under `..<timestamp>/`, which would load twice.
    return name.startswith(".")


def _walk(directory: Path) -> Iterator[tuple[Path, bool]]:
    """(path, is a directory) for the directory and everything visible under it, in the order of the
    reference's filepath.Walk: lexical, a subdirectory's files where its name sorts among the files."""
    yield directory, True
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if _hidden(entry.name):
            continue
        # Like filepath.Walk, a symlinked directory is not entered (a symlinked file is read).
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path), False


def expand(paths: Sequence[Path]) -> list[Path]:
    """The files of a set: each file named, and every visible file under each directory named.

    The reference reads every file under its runtime directory whatever its extension (goruntime's
    loader walks the tree), so a stray file there is refused, not skipped: the same here.
    """
    return [found for path in paths
            for found, is_dir in (_walk(path) if path.is_dir() else [(path, False)]) if not is_dir]


def watched(paths: Sequence[Path]) -> list[Path]:
    """What to watch for changes to the set: its files, and its directories (a file added or removed)."""
    return [found for path in paths for found, _ in (_walk(path) if path.is_dir() else [(path, False)])]


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)


def read_stable(path: Path) -> str:
    """The file's text as one state of it: re-read while it changes under the read or was just modified.

    Raises ConfigError naming the file when it cannot be read, or keeps changing.
    """
    for _ in range(READ_ATTEMPTS):
        try:
            before = _identity(path)
            if 0 <= time.time_ns() - before[1] < SETTLE_S * 1e9:  # (a future mtime: skew, not a writer)
                time.sleep(SETTLE_S)  # written a moment ago: a writer may be between two writes
                continue
            data = path.read_bytes()
            if _identity(path) != before:
                continue  # changed while read: what was read may mix two versions
        except OSError as exc:
            raise ConfigError(str(path), [ConfigIssue((), f"cannot read file: {exc}")]) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(str(path), [ConfigIssue((), f"cannot read file: {exc}")]) from None
    raise ConfigError(str(path), [ConfigIssue((), f"kept changing while read ({READ_ATTEMPTS} attempts); "
                                              "write it elsewhere and rename it into place")])


def duplicate_domains(files: Sequence[tuple[str, DescriptorFile]], merge: bool) -> Iterator[tuple[str, str]]:
    """(file name, reason) for each file the set refuses as a duplicate, as the reference loads a set.

    Without merge (MERGE_DOMAIN_CONFIG off) a domain may appear in one file only; with it, the files'
    descriptor trees join under the domain, so a top-level descriptor may appear in one file only.
    """
    first: dict[str, str] = {}
    top: dict[tuple[str, str, str], str] = {}
    for name, parsed in files:
        owner = first.setdefault(parsed.domain, name)
        if owner != name and not merge:
            yield name, (f"duplicate domain '{parsed.domain}' in config file (also in {owner}); set "
                         "rate_limits.merge_domains (MERGE_DOMAIN_CONFIG) to merge the files of one domain")
            continue
        for d in parsed.descriptors:
            where = top.setdefault((parsed.domain, d.key, d.value), name)
            if where != name:
                composite = d.key + (f"_{d.value}" if d.value else "")
                yield name, f"duplicate descriptor composite key '{parsed.domain}.{composite}' (also in {where})"


def load(paths: Sequence[Path], merge: bool) -> list[LoadedFile]:
    """Every file of the set, parsed; raises SetError naming each file refused and why."""
    loaded: list[LoadedFile] = []
    problems: list[tuple[str, str]] = []
    for path in expand(paths):
        try:
            loaded.append(LoadedFile(str(path), parse_descriptor_file(read_stable(path), str(path))))
        except ConfigError as exc:
            problems.extend((exc.filename, issue.render(exc.filename)) for issue in exc.issues)
    problems.extend((name, f"{name}: {reason}") for name, reason in
                    duplicate_domains([(f.name, f.config) for f in loaded], merge))
    if problems:
        raise SetError(problems)
    return loaded


class SetError(ValueError):
    """A set refused; `problems` holds one line per refusal, each starting with the file it is about."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.files = [name for name, _ in problems]
        self.problems = [line for _, line in problems]
        super().__init__("; ".join(self.problems))


def check_files(rl: RateLimitsConfig | None) -> Iterator[Problem]:
    """`rate_limits.files` for `outrider validate` (and every start): the set loads, and no file's descriptor
    clashes with one generated from the tier plans. The lines are those the service logs and check-config prints."""
    if rl is None:
        return
    # Each problem under the `files` entry that holds its file (a file, or a directory it is under).
    entry = {str(f): i for i, named in enumerate(rl.files) for f in expand([named])}
    try:
        loaded = load(rl.files, rl.merge_domains)
    except SetError as exc:
        for name, problem in zip(exc.files, exc.problems, strict=True):
            yield ("rate_limits", "files", entry.get(name, 0)), problem
        return
    for parsed_file in loaded:
        parsed = parsed_file.config
        if parsed.domain == rl.domain and rl_has_generated(rl):
            given = {d.key + (f"_{d.value}" if d.value else "") for d in parsed.descriptors}
            clash = generated_keys(rl) & given | {FAILURE_MODE_KEY} & {d.key for d in parsed.descriptors}
            if clash:
                yield (("rate_limits", "files", entry.get(parsed_file.name, 0)),
                       f"{parsed_file.name}: descriptor '{sorted(clash)[0]}' is also generated from the tier plans")
