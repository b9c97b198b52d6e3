"""Write a set of artifacts all-or-nothing by swapping whole directories.

Files are written into a hidden staging directory beside the target (``.NAME.staging-PID-XXXX``). ``commit`` renames
it onto the target in one ``rename``; a target that already holds a set is first renamed aside, so at every instant
the target holds the previous complete set, nothing, or the new complete set, never a mix, even under SIGKILL or two
exports racing (``rename`` onto a non-empty directory fails, so the loser retries instead of merging). Leftovers of
killed runs are hidden directories named with a dead PID; the next writer beside them removes them.

Because the whole directory is replaced, a target must be new, empty, or a set written by vanilladeploy (it holds
the marker file ``.vanilladeploy``); anything else is refused rather than moved.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from vanilladeploy.errors import OutputError

MARKER = ".vanilladeploy"
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:staging|old)-(?P<pid>\d+)-")


def check_output_dir(out_dir: Path) -> None:
    """Refuse a target the swap could harm: a file, the working directory (or above it), or foreign content."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file, not a directory.")
    resolved, cwd = out_dir.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f"--out {out_dir} is the working directory or above it; choose a subdirectory.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
        raise OutputError(f"--out {out_dir} holds files vanilladeploy did not write, and an export replaces the "
                          "whole directory; choose a new or empty directory.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(parent: Path, name: str) -> None:
    """Delete staging/old directories of ``name`` left by writers that no longer run (killed exports)."""
    for entry in parent.glob(f".{name}.*-*"):
        match = _LEFTOVER.match(entry.name)
        if match and match["name"] == name and entry.is_dir() and not _pid_alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactWriter:
    """``stage(name)`` gives a path to write; ``commit()`` publishes every staged file at once."""

    def __init__(self, out_dir: Path) -> None:
        check_output_dir(out_dir)
        self.out_dir = out_dir
        self._staging: Path | None = None
        self._names: list[str] = []
        self._created: list[Path] = []

    def stage(self, name: str) -> Path:
        if self._staging is None:
            parent = self.out_dir.parent
            self._created = [p for p in (parent, *parent.parents) if not p.exists()]
            parent.mkdir(parents=True, exist_ok=True)
            remove_leftovers(parent, self.out_dir.name)
            prefix = f".{self.out_dir.name}.staging-{os.getpid()}-"
            self._staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            self._staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
        self._names.append(name)
        (self._staging / name).parent.mkdir(parents=True, exist_ok=True)  # "1/model.onnx": a set with folders
        return self._staging / name

    def staged(self) -> list[Path]:
        """The staged paths, in the order they were asked for."""
        return [self._staging / name for name in self._names] if self._staging else []

    def commit(self) -> list[Path]:
        if self._staging is None:
            raise RuntimeError("nothing staged")
        staging, parent, asides = self._staging, self.out_dir.parent, []
        (staging / MARKER).write_text("artifacts written by vanilladeploy; the directory is replaced as a whole\n")
        for path in staging.rglob("*"):
            if path.is_file():
                with path.open("rb") as f:
                    os.fsync(f.fileno())
        for _ in range(20):
            try:
                os.rename(staging, self.out_dir)
                break
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise  # a real failure (permissions, another filesystem): leave the old set where it is
                # the target exists and is not empty: move it aside, then retry
                aside = parent / f".{self.out_dir.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
                try:
                    os.rename(self.out_dir, aside)
                    asides.append(aside)
                except FileNotFoundError:
                    continue
        else:
            raise OutputError(f"could not publish {self.out_dir}: it kept being replaced by other writers.")
        self._staging = None
        _fsync_dir(parent)
        for aside in asides:
            shutil.rmtree(aside, ignore_errors=True)
        return [self.out_dir / name for name in self._names]

    def abort(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        for directory in self._created:  # deepest first
            try:
                directory.rmdir()
            except OSError:
                break

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._staging is not None:
            self.abort()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path`` (parents created), then rename it to ``path``;
    on failure the temporary file is removed and ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
