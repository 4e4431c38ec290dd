"""FileChangeDetector: a real content change is seen once; touching or rewriting the same bytes is not one."""

from __future__ import annotations

import os
from pathlib import Path

from outrider.config.watch import FileChangeDetector


def test_detects_content_changes_only(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("one")
    b.write_text("two")
    detector = FileChangeDetector([a, b])
    assert not detector.changed()
    os.utime(a, ns=(1, 1))                # stat moved, bytes did not
    assert not detector.changed()
    b.write_text("three")
    assert detector.changed()
    assert not detector.changed()         # once per change
    a.unlink()
    assert detector.changed()             # a vanished file is a change (the loader then says why)
    detector.watch([b])
    assert not detector.changed()
