"""The committed generated protobuf code is what scripts/gen_protos.py makes from proto/ today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.harness import ROOT


def _gen_protos():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current(tmp_path: Path) -> None:
    gen = _gen_protos()
    written = gen.generate(tmp_path)
    assert any(p.name == "service_config_pb2.py" for p in written)
    committed = ROOT / "outrider" / "protos"
    for path in written:
        assert (committed / path).read_bytes() == (tmp_path / path).read_bytes(), (
            f"outrider/protos/{path} is stale: run `python scripts/gen_protos.py`")
    # Nothing generated is left behind once its .proto is gone.
    stale = {p.relative_to(committed) for p in committed.rglob("*_pb2.py*")} - set(written)
    assert not stale, f"generated files without a .proto: {sorted(map(str, stale))}"
