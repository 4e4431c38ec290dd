"""`outrider ratelimit check-config DIR`: load a set of descriptor files as the service would, report every refusal.

The reference's config check command (envoyproxy/ratelimit src/config_check_cmd/main.go: `-config_dir`,
`-merge_domain_configs`) loads every file of a directory and exits 1 on the first error. This one loads the
same set the service loads (file_set: directories walked, dot files skipped), prints every refused file
with its reason, and exits 1; all loaded, a one-line summary and exit 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from outrider.plugins import CliCommand
from ratelimit_service import file_set
from ratelimit_service.limits import compile_table


def check(paths: Sequence[Path], merge: bool) -> tuple[list[str], str]:
    """(refusals, summary): each refusal a line naming its file; the summary when there are none."""
    missing = [f"{p}: no such file or directory" for p in paths if not p.exists()]
    if missing:
        return missing, ""
    try:
        loaded = file_set.load(paths, merge)
    except file_set.SetError as exc:
        return exc.problems, ""
    try:
        table = compile_table(None, [f.config for f in loaded])
    except ValueError as exc:  # a rule the per-file checks cannot see
        return [f"{', '.join(f.name for f in loaded)}: {exc}"], ""
    domains = sorted(table.domains)
    return [], f"{len(loaded)} files, {len(domains)} domains ({', '.join(domains)}): all rate limit configs ok"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="DIR",
                        help="a directory of descriptor files (every file under it), or files")
    parser.add_argument("--merge-domains", action="store_true",
                        help="merge files of one domain (the reference's -merge_domain_configs, MERGE_DOMAIN_CONFIG)")


def run(args: argparse.Namespace) -> int:
    print(f"checking rate limit configs: {' '.join(str(p) for p in args.paths)}")
    refusals, summary = check(args.paths, args.merge_domains)
    for line in refusals:
        print(f"error: {line}", file=sys.stderr)
    if refusals:
        print(f"{len(refusals)} errors: rate limit configs refused", file=sys.stderr)
        return 1
    print(summary)
    return 0


def _add_ratelimit_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ratelimit_command", required=True)
    p = sub.add_parser("check-config", help="load envoyproxy/ratelimit descriptor files as the service would; "
                                            "exit 1 naming each refused file")
    add_arguments(p)
    p.set_defaults(func=run)


def _dispatch(args: argparse.Namespace) -> int:
    return int(args.func(args))


# `outrider ratelimit check-config DIR` (the plugin's CLI command).
COMMAND = CliCommand("ratelimit", "rate limit service tools (check-config)", _add_ratelimit_commands, _dispatch)


def main(argv: list[str]) -> int:
    """`python -m ratelimit_service check-config DIR...`."""
    parser = argparse.ArgumentParser(prog="python -m ratelimit_service check-config",
                                     description="check envoyproxy/ratelimit descriptor files")
    add_arguments(parser)
    return run(parser.parse_args(argv))
