"""Write a set of artifacts all-or-nothing: stage each as a hidden temp file beside its target, then rename.

On failure (an exception inside ``with ArtifactWriter(...)``) every staged file is deleted and a directory the
writer created is removed again, so a failed run leaves the previous complete artifacts, or nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class ArtifactWriter:
    """``stage(name)`` gives a temp path to write; ``commit()`` fsyncs and renames them in staging order."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._staged: list[tuple[Path, Path]] = []
        self._created: list[Path] = []

    def stage(self, name: str) -> Path:
        if not self.out_dir.is_dir():
            missing = [p for p in (self.out_dir, *self.out_dir.parents) if not p.exists()]
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._created = missing
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.out_dir)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual permissions
        self._staged.append((Path(tmp), self.out_dir / name))
        return Path(tmp)

    def commit(self) -> list[Path]:
        for tmp, _ in self._staged:
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
        for tmp, final in self._staged:
            os.replace(tmp, final)
        finals = [final for _, final in self._staged]
        self._staged = []
        return finals

    def abort(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged = []
        for directory in self._created:  # deepest first
            try:
                directory.rmdir()
            except OSError:
                break

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None or self._staged:
            self.abort()
