"""vanilladeploy/atomic.py: a file is replaced whole or not at all, and a failed write leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from vanilladeploy.atomic import write_atomically


def test_writes_creating_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "f.json"
    assert write_atomically(path, lambda tmp: tmp.write_text("new")) == path
    assert path.read_text() == "new" and [p.name for p in path.parent.iterdir()] == ["f.json"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f.onnx"
    path.write_text("old")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        write_atomically(path, half_then_crash)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.onnx"]
