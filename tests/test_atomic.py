"""vanilladeploy/atomic.py: all artifacts appear together, or none do; foreign directories are never touched."""

import os
from pathlib import Path

import pytest

from vanilladeploy.atomic import MARKER, ArtifactWriter, remove_leftovers
from vanilladeploy.errors import OutputError


def _write_set(out: Path, content: bytes) -> list[Path]:
    with ArtifactWriter(out) as writer:
        writer.stage("x.onnx").write_bytes(content)
        writer.stage("x.json").write_text("{}")
        assert not out.exists() or (out / "x.onnx").read_bytes() != content  # nothing visible before commit
        return writer.commit()


def test_commit_publishes_every_staged_file(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    finals = _write_set(out, b"onnx")
    assert [p.name for p in finals] == ["x.onnx", "x.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "x.json", "x.onnx"])
    assert (out / "x.onnx").stat().st_mode & 0o044  # readable by others, as with a plain open()
    assert [p.name for p in tmp_path.joinpath("a").iterdir()] == ["b"]  # no staging left beside it


def test_second_commit_replaces_the_whole_set(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write_set(out, b"old")
    (out / "stale.engine").write_bytes(b"built from the old onnx")
    _write_set(out, b"new")
    assert (out / "x.onnx").read_bytes() == b"new" and not (out / "stale.engine").exists()


def test_failure_removes_staging_and_created_directories(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    with pytest.raises(RuntimeError):
        with ArtifactWriter(out) as writer:
            writer.stage("x.onnx").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()


def test_failure_keeps_existing_set(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write_set(out, b"old")
    with pytest.raises(KeyboardInterrupt):
        with ArtifactWriter(out) as writer:
            writer.stage("x.onnx").write_bytes(b"new, half written")
            raise KeyboardInterrupt
    assert (out / "x.onnx").read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("setup,message", [
    (lambda d: (d / "out").write_text("x"), "is a file"),
    (lambda d: ((d / "out").mkdir(), (d / "out" / "mine.txt").write_text("x")), "did not write"),
])
def test_unsafe_targets_are_refused(tmp_path: Path, setup, message: str) -> None:
    setup(tmp_path)
    with pytest.raises(OutputError, match=message):
        ArtifactWriter(tmp_path / "out")


def test_working_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for target in (Path("."), tmp_path.parent):
        with pytest.raises(OutputError, match="working directory"):
            ArtifactWriter(target)


def test_leftovers_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / ".out.staging-999999999-abcd"
    alive = tmp_path / f".out.staging-{os.getpid()}-efgh"
    other = tmp_path / ".other.staging-999999999-abcd"
    for d in (dead, alive, other):
        d.mkdir()
    remove_leftovers(tmp_path, "out")
    assert not dead.exists() and alive.exists() and other.exists()
