"""The Triton rooms import one way (docs/design.md §9): writing a repository (triton/) needs no server and no
cluster; a cluster's files (cluster/) need the repository writer, never a server (serving/). Read from every import
statement of every module, those inside functions included, so a lazy import cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vanilladeploy"
NEVER = {"triton": ("vanilladeploy.serving", "vanilladeploy.cluster", "vanilladeploy.cli"),
         "cluster": ("vanilladeploy.serving", "vanilladeploy.cli"),
         "serving": ("vanilladeploy.cluster", "vanilladeploy.cli")}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


@pytest.mark.parametrize("room", sorted(NEVER))
def test_each_room_imports_only_what_it_may(room: str) -> None:
    modules = sorted((PACKAGE / room).glob("*.py"))
    assert len(modules) >= 4, modules  # the room exists and holds its modules
    crossings = [f"{m.name} imports {name}" for m in modules for name in sorted(imports(m))
                 if name.startswith(NEVER[room])]
    assert crossings == []


def test_the_check_sees_a_lazy_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from vanilladeploy.serving.server import TritonServer\n")
    assert "vanilladeploy.serving.server" in imports(module)
