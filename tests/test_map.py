"""The map is true: every module or file path named in docs/, README.md or a docstring exists, and every dotted
``vanilladeploy.…`` name resolves (a module, or an attribute of one). Moving a room without updating its mentions
fails here."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("vanilladeploy", "models", "exporters", "benchmarks", "tests", "docs", ".ci")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*[\w/])" % "|".join(re.escape(r) for r in ROOMS))
DOTTED = re.compile(r"(?<![\w.])(vanilladeploy(?:\.\w+)+)")
FILE_SUFFIXES = (".json", ".yaml", ".txt", ".md", ".py", ".onnx", ".pth")
"""``vanilladeploy.json`` is a file name, not a module."""
ELSEWHERE = {"docs/operators.md"}
"""Paths named as another project's files (onnx-tensorrt's support matrix), not ours."""
SOURCES = [p for room in ("vanilladeploy", "models", "exporters", "benchmarks", "tests") for p in
           sorted((ROOT / room).rglob("*.py"))]


def _docstrings(path: Path) -> list[str]:
    """Every string that stands as a statement of its own: module, class, function and attribute docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.value.value for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)]


def _texts() -> dict[str, str]:
    texts = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in
             [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/results/README.md"))]}
    texts.update({str(p.relative_to(ROOT)): "\n".join(_docstrings(p)) for p in SOURCES})
    return texts


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _exists(path: str) -> bool:
    """The path, or the files it is the stem of (a results stem names its .json, .csv and .png)."""
    return path in ELSEWHERE or (ROOT / path).exists() or any((ROOT / path).parent.glob(Path(path).name + ".*"))


def test_every_path_named_exists() -> None:
    missing = sorted({f"{where}: {m.rstrip('/.')}" for where, text in _texts().items()
                      for m in PATH.findall(text) if not _exists(m.rstrip("."))})
    assert not missing, "paths named but absent:\n" + "\n".join(missing)


def test_every_dotted_name_resolves() -> None:
    missing = sorted({f"{where}: {name}" for where, text in _texts().items()
                      for name in DOTTED.findall(text) if not name.endswith(FILE_SUFFIXES)
                      and not _resolves(name.rstrip("."))})
    assert not missing, "names that do not resolve:\n" + "\n".join(missing)


@pytest.mark.parametrize("text, found", [("see exporters/gone.py.", ["exporters/gone.py"]),
                                         ("`vanilladeploy/serving/` holds", ["vanilladeploy/serving/"]),
                                         ("my_exporters/x.py", [])])
def test_the_path_pattern_finds_what_a_reader_would(text: str, found: list[str]) -> None:
    assert PATH.findall(text) == found
