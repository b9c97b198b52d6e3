"""The installed layout: only ``vanilladeploy`` is importable at top level. The repository's models/, exporters/ and
benchmarks/ install as ``vanilladeploy.models`` … (setuptools package-dir), so a VanillaNet training repository's
own ``models/`` (the official one has ``models/vanillanet.py``, which needs timm) never shadows ours: neither
``python -m vanilladeploy`` nor the API run from inside such a repository may import it."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("models", "exporters", "benchmarks")


@pytest.fixture
def training_repository(tmp_path: Path) -> Path:
    """A working directory like the official VanillaNet repository's: its own models/vanillanet.py (which fails to
    import without timm), and exporters/ and benchmarks/ packages that fail loudly if anything imports them."""
    for name in FOLDERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError(\"the working directory's {name}/ was "
                                                     "imported instead of vanilladeploy's\")\n")
    (tmp_path / "models" / "vanillanet.py").write_text("raise ModuleNotFoundError(\"No module named 'timm'\")\n")
    return tmp_path


def test_python_m_vanilladeploy_runs_inside_a_training_repository(training_repository: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "vanilladeploy", "inspect", "vanillanet_5", "--json"],
                          cwd=training_repository, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["architecture"]["variant"] == "vanillanet_5"


def test_the_readme_api_snippet_runs_inside_a_training_repository(training_repository: Path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```", text.split("## Python API", 1)[1], re.S)[1]
    done = subprocess.run([sys.executable, "-c", snippet], cwd=training_repository, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == ["True build/vn5/vanillanet_5.onnx", "(1, 1000)"], done.stdout


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_imports_the_folders_by_their_top_level_names() -> None:
    sources = [p for folder in ("vanilladeploy", *FOLDERS, "tests") for p in (ROOT / folder).rglob("*.py")]
    offenders = {str(p.relative_to(ROOT)): sorted(_top_level_imports(p) & set(FOLDERS)) for p in sources}
    assert len(sources) > 50 and not {k: v for k, v in offenders.items() if v}


def test_the_wheel_holds_vanilladeploy_and_nothing_else_at_top_level(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info",
                                                                "__pycache__", "results"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    wheel = next((tmp_path / "dist").glob("vanilladeploy-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"vanilladeploy"}, tops
    for inside in ("models/vanillanet.py", "triton/python_model.py", "benchmarks/run.py"):
        assert f"vanilladeploy/{inside}" in names, inside
