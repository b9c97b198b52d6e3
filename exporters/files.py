"""Write one file all-or-nothing: into a hidden temporary name beside it, then rename it into place.

A reader (or the next run, finding a cached file) sees the old file, no file, or the complete new one; never a
truncated one left by a crash or a kill. Sets of files that must change together use
:class:`vanilladeploy.atomic.ArtifactWriter` instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


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


__all__ = ["write_atomically"]
