"""The suite cannot go green in CI by skipping: with ``CI=true`` a dependency that CI installs but cannot import is a
FAILURE (here: tritonclient shadowed by a package whose import raises), while on a developer machine it is a skip
with its reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def serving_modules() -> list[str]:
    """Every test module that cannot be collected without tritonclient: it calls ``require_triton()`` or
    ``require("tritonclient…", module_level=True)`` at module level. Read from the files, so a new one is covered."""
    return [f"tests/{path.name}" for path in sorted((ROOT / "tests").glob("test_*.py"))
            if any(line.startswith(("require_triton(", 'require("tritonclient'))
                   for line in path.read_text(encoding="utf-8").splitlines())]


def test_the_serving_modules_are_found() -> None:
    assert {"tests/test_repo.py", "tests/test_serve.py", "tests/test_serve_url.py", "tests/test_deploy.py",
            "tests/test_serve_watch.py"} <= set(serving_modules())


@pytest.mark.parametrize("ci", ["true", ""])
def test_serving_tests_fail_under_ci_when_tritonclient_is_unimportable(tmp_path: Path, ci: str) -> None:
    shadow = tmp_path / "tritonclient"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('tritonclient made unimportable for this test')\n")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "CI": ci}
    serving = serving_modules()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *serving, "-rs"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    if ci:
        failed = done.stdout.count("CI=true: CI installs it")
        assert done.returncode != 0 and failed == len(serving), done.stdout[-2000:]
    else:
        skipped = f"{len(serving)} skipped"
        assert done.returncode in (0, 5) and skipped in done.stdout, done.stdout[-2000:]  # 5: none ran
        assert "tritonclient made unimportable" in done.stdout


@pytest.mark.parametrize(("cpu", "ci", "outcome"), [
    ("amd-epyc-avx512-bf16-no-amx.cpuinfo", "true", "1 failed"),
    ("amd-epyc-avx512-bf16-no-amx.cpuinfo", "", "1 skipped"),
    ("amd-epyc-7302p-avx2.cpuinfo", "true", "1 skipped"),
])
def test_a_skipped_bf16_test_fails_under_ci_on_a_cpu_with_native_bf16(tmp_path: Path, cpu: str, ci: str,
                                                                       outcome: str) -> None:
    """The suite's own hook (tests/conftest.py), on a real CPU description: a bf16 test that skips is a failure
    under CI=true where the CPU computes bf16 natively, and stays a skip elsewhere."""
    (tmp_path / "conftest.py").write_text(f'''
import importlib.util
import vanilladeploy.machine as machine
spec = importlib.util.spec_from_file_location("suite_conftest", {str(ROOT / "tests" / "conftest.py")!r})
suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)
pytest_runtest_makereport = suite.pytest_runtest_makereport
flags = suite.cpu_flags_of({cpu!r})
machine.cpu_flags = lambda: flags
''')
    (tmp_path / "test_x.py").write_text("import pytest\n\ndef test_bf16_path():\n    pytest.skip('no bf16 here')\n")
    env = os.environ | {"PYTHONPATH": str(ROOT), "CI": ci}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_x.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert outcome in done.stdout, done.stdout[-2000:]
