"""The map is true: every module or file path named in docs/, README.md or a docstring exists, every dotted
module name resolves (a module, or an attribute of one), and docs/design.md §9 lists every module once. Moving,
adding or removing a room without updating its mentions fails here.

A name may start at the package (``vanilladeploy.runtimes.trt_plan``), at a folder of the repository's top that
installs under it (``exporters.contract``, ``benchmarks.floor``), or at a folder inside it (``serving.serve_bench``,
``serving/serve_bench.py``); a docstring's ``:mod:`.name``` is resolved from its own package."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = ("models", "exporters", "benchmarks")
"""Folders at the repository's top that install as ``vanilladeploy.<folder>``."""
INNER = ("runtimes", "pipeline", "triton", "serving", "cluster", "cli")
"""Folders inside ``vanilladeploy/``, often named without it (``serving/serve_bench.py``, ``runtimes.runners``)."""
ROOMS = ("vanilladeploy", *INSTALLED, *INNER, "tests", "docs", ".ci")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*[\w/])" % "|".join(re.escape(r) for r in ROOMS))
DOTTED = re.compile(r"(?<![\w./-])((?:%s)(?:\.\w+)+)(?![\w.]*/)" % "|".join(("vanilladeploy", *INSTALLED, *INNER)))
"""Not a name followed by ``/``: that is a host or an API group (``serving.kserve.io/v1beta1``), not a module."""
RELATIVE = re.compile(r":\w+:`~?(\.[\w.]+)`")
"""A Sphinx role naming a module relative to the docstring's package (``:mod:`.trt_plan```)."""
FILE_SUFFIXES = (".json", ".yaml", ".txt", ".md", ".py", ".onnx", ".pth")
"""``vanilladeploy.json`` is a file name, not a module."""
ELSEWHERE = {"docs/operators.md"}
"""Paths named as another project's files (onnx-tensorrt's support matrix), not ours."""
SOURCES = [p for room in ("vanilladeploy", "models", "exporters", "benchmarks", "tests") for p in
           sorted((ROOT / room).rglob("*.py"))]


def _in_package(name: str, sep: str) -> str:
    """``name`` (dotted, or a path with ``sep="/"``) as spelled inside the installed package or the repository:
    ``exporters.contract`` → ``vanilladeploy.exporters.contract``, ``serving/serve_bench.py`` →
    ``vanilladeploy/serving/serve_bench.py``."""
    first = name.split(sep)[0]
    if first in INNER or (sep == "." and first in INSTALLED):
        return f"vanilladeploy{sep}{name}"
    return name


def _package(path: Path) -> str:
    """The installed package a source file belongs to (``exporters/qdq.py`` → ``vanilladeploy.exporters``)."""
    return _in_package(".".join(path.relative_to(ROOT).parts[:-1]), ".")


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
    parts = _in_package(dotted, ".").split(".")
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
    path = _in_package(path, "/")
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


def _house() -> dict[str, list[str]]:
    """DESIGN §9's list: room folder (relative to the repository) → the modules listed under it, in order."""
    section = (ROOT / "docs" / "design.md").read_text(encoding="utf-8").split("## 9.")[1]
    rooms: dict[str, list[str]] = {}
    for line in section.split("```")[1].splitlines():
        if line and not line[0].isspace():
            room = rooms.setdefault(line.split()[0].rstrip("/"), [])
        elif line.startswith("  ") and not line[2].isspace():
            room.append(line.split()[0])
    return rooms


def _needs_a_line(path: Path) -> bool:
    """Every module; an ``__init__`` only where it holds more than its docstring."""
    if path.name != "__init__.py":
        return True
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
               and not (isinstance(node, ast.ImportFrom) and node.module == "__future__") for node in body)


def test_the_house_lists_every_module_once() -> None:
    house = _house()
    assert {"models", "exporters", "benchmarks", "vanilladeploy", *(f"vanilladeploy/{r}" for r in INNER)} == set(house)
    problems = []
    for room, listed in house.items():
        files = {p.stem: p for p in (ROOT / room).glob("*.py")}
        problems += [f"{room}: {m} listed twice" for m in sorted(set(listed)) if listed.count(m) > 1]
        problems += [f"{room}: {m} listed, no {m}.py" for m in listed if m not in files]
        problems += [f"{room}/{p.name} not listed" for m, p in sorted(files.items()) if m not in listed
                     and _needs_a_line(p)]
    assert not problems, "docs/design.md §9 is not the house:\n" + "\n".join(problems)


def test_every_relative_module_reference_resolves() -> None:
    missing = sorted({f"{p.relative_to(ROOT)}: {name}" for p in SOURCES if p.relative_to(ROOT).parts[0] != "tests"
                      for name in RELATIVE.findall("\n".join(_docstrings(p)))
                      if not _resolves(importlib.util.resolve_name(name.rstrip("."), _package(p)))})
    assert not missing, "relative module names that do not resolve:\n" + "\n".join(missing)


@pytest.mark.parametrize("text, found", [("see exporters/gone.py.", ["exporters/gone.py"]),
                                         ("`vanilladeploy/serving/` holds", ["vanilladeploy/serving/"]),
                                         ("`serving/serve_bench.py` runs", ["serving/serve_bench.py"]),
                                         ("my_exporters/x.py", []), ("docs/serving.md", ["docs/serving.md"])])
def test_the_path_pattern_finds_what_a_reader_would(text: str, found: list[str]) -> None:
    assert PATH.findall(text) == found


@pytest.mark.parametrize("text, found", [
    (":mod:`exporters.trt_plan` calls", ["exporters.trt_plan"]),
    ("``vanilladeploy.runtimes.trt_plan.engine_sidecar``", ["vanilladeploy.runtimes.trt_plan.engine_sidecar"]),
    ("see runtimes.runners, serving.serve_bench and benchmarks.floor.", ["runtimes.runners", "serving.serve_bench",
                                                                   "benchmarks.floor"]),
    ("a `serving.kserve.io/v1beta1` InferenceService", []),  # KServe's API group, not a module
    ("the models. Then", []), ("torch.onnx.export, self.models.x", []), ("docs/serving.md", [])])
def test_the_dotted_pattern_finds_what_a_reader_would(text: str, found: list[str]) -> None:
    assert DOTTED.findall(text) == found


@pytest.mark.parametrize("name, resolves", [("exporters.contract.check_graph_contract", True),
                                            ("runtimes.trt_plan", True), ("serving.serve_bench", True),
                                            ("exporters.trt_plan", False), ("exporters.tensorrt_engine", False),
                                            ("vanilladeploy.runtimes.RUNTIMES", True)])
def test_names_resolve_inside_the_installed_package(name: str, resolves: bool) -> None:
    assert _resolves(name) is resolves


def test_a_relative_name_resolves_from_its_own_package() -> None:
    package = _package(ROOT / "vanilladeploy" / "runtimes" / "trt_plan.py")
    assert package == "vanilladeploy.runtimes" and _package(ROOT / "exporters" / "qdq.py") == "vanilladeploy.exporters"
    assert _resolves(importlib.util.resolve_name(".tensorrt", package))
    assert not _resolves(importlib.util.resolve_name(".tensorrt_engine", package))
