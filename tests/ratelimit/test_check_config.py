"""`outrider ratelimit check-config DIR` / `python -m ratelimit_service check-config DIR`, after the reference's
config check command (envoyproxy/ratelimit src/config_check_cmd/main.go: `-config_dir`, `-merge_domain_configs`;
it loads every file of the directory, prints the error naming the file and exits 1, else "all rate limit
configs ok" and exit 0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from outrider import cli
from tests.harness import ROOT

GOOD = """
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100}
"""


def write(directory: Path, name: str, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ratelimit_service", "check-config", *args],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_every_refused_file_is_named_with_its_reason_and_the_exit_is_non_zero(tmp_path: Path) -> None:
    """config_check_cmd exits 1 with "<file>: <reason>" (config_impl.go newRateLimitConfigError); here every
    refused file is listed, not only the first: an unknown key, a bad unit, a duplicate domain."""
    write(tmp_path, "a_good.yaml", GOOD)
    write(tmp_path, "b_unknown_key.yaml", "domain: other\ndescriptors:\n  - key: k\n    colour: red\n")
    write(tmp_path, "c_bad_unit.yaml", "domain: third\ndescriptors:\n  - key: k\n"
                                       "    rate_limit: {unit: fortnight, requests_per_unit: 1}\n")
    write(tmp_path, "d_duplicate.yaml", GOOD)
    result = run_module(str(tmp_path))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, result.stderr
    assert errors[0].startswith(f"error: {tmp_path / 'b_unknown_key.yaml'}:") and "colour" in errors[0]
    assert errors[1].startswith(f"error: {tmp_path / 'c_bad_unit.yaml'}:") and "unit" in errors[1]
    assert errors[2] == (f"error: {tmp_path / 'd_duplicate.yaml'}: duplicate domain 'messaging' in config file "
                         f"(also in {tmp_path / 'a_good.yaml'}); set rate_limits.merge_domains "
                         "(MERGE_DOMAIN_CONFIG) to merge the files of one domain")


def test_all_loaded_exits_zero_with_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The reference prints "all rate limit configs ok" and exits 0; `-merge_domain_configs` (here
    --merge-domains) lets two files of one domain load. Through `outrider ratelimit check-config` too."""
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", "domain: messaging\ndescriptors:\n  - key: campaign\n"
                              "    rate_limit: {unit: hour, requests_per_unit: 10}\n")
    with pytest.raises(SystemExit) as refused:
        cli.main(["ratelimit", "check-config", str(tmp_path)])
    assert refused.value.code == 1
    capsys.readouterr()

    with pytest.raises(SystemExit) as merged:
        cli.main(["ratelimit", "check-config", "--merge-domains", str(tmp_path)])
    assert merged.value.code == 0
    out = capsys.readouterr().out
    assert "2 files, 1 domains (messaging): all rate limit configs ok" in out


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    """config_check_cmd: "error opening directory <dir>" and exit 1."""
    result = run_module(str(tmp_path / "nope"))
    assert result.returncode == 1
    assert f"{tmp_path / 'nope'}: no such file or directory" in result.stderr
