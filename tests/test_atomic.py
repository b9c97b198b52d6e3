"""vanilladeploy/atomic.py: all artifacts appear together, or none do."""

from pathlib import Path

import pytest

from vanilladeploy.atomic import ArtifactWriter


def test_commit_renames_every_staged_file(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    with ArtifactWriter(out) as writer:
        writer.stage("x.onnx").write_bytes(b"onnx")
        writer.stage("x.json").write_text("{}")
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []
        finals = writer.commit()
    assert [p.name for p in finals] == ["x.onnx", "x.json"]
    assert sorted(p.name for p in out.iterdir()) == ["x.json", "x.onnx"]
    assert (out / "x.onnx").stat().st_mode & 0o044  # readable by others, as with a plain open()


def test_failure_removes_temp_files_and_created_directories(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    with pytest.raises(RuntimeError):
        with ArtifactWriter(out) as writer:
            writer.stage("x.onnx").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()


def test_failure_keeps_existing_files(tmp_path: Path) -> None:
    (tmp_path / "x.onnx").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with ArtifactWriter(tmp_path) as writer:
            writer.stage("x.onnx").write_bytes(b"new, half written")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["x.onnx"] and (tmp_path / "x.onnx").read_bytes() == b"old"
