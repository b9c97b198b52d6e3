"""vanilladeploy/doctor.py: the truth on this machine, and parts made missing or broken (monkeypatched imports):
each gives its own reason and install line, and doctor never raises."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from typer.testing import CliRunner

from vanilladeploy.cli import app
from vanilladeploy.doctor import diagnose


def _caps(monkeypatch: pytest.MonkeyPatch | None = None) -> dict[str, dict]:
    return {c["command"]: c for c in diagnose().as_dict()["capabilities"]}


def _parts() -> dict[str, dict]:
    return {c["name"]: c for c in diagnose().as_dict()["components"]}


def test_this_machine() -> None:
    info = diagnose().as_dict()
    json.dumps(info)  # serializable as is
    parts, caps = _parts(), _caps()
    assert parts["torch"]["version"] == torch.__version__ and parts["onnxruntime"]["ok"]
    assert "CPUExecutionProvider" in parts["onnxruntime"]["detail"]
    assert caps["export"]["ready"]
    if not torch.cuda.is_available():  # CI: no GPU, no TensorRT
        trt = caps["export --trt"]
        assert not trt["ready"] and "pip install 'vanilladeploy[trt]'" in trt["fix"]
        assert not caps["bench: tensorrt (cpu)"]["ready"] and caps["bench: onnxruntime (cpu)"]["ready"]


@pytest.mark.parametrize(("module", "capability", "fix"), [
    ("onnxsim", "export", "pip install vanilladeploy"),
    ("onnxruntime", "export", "pip install vanilladeploy"),
    ("matplotlib", "bench: baselines + plot", "pip install 'vanilladeploy[bench]'"),
    ("torchvision", "bench: baselines + plot", "pip install 'vanilladeploy[bench]'"),
    ("tritonclient", "serve, serve-bench", "pip install 'vanilladeploy[serve]'"),
    ("pytriton", "serve, serve-bench", "pip install 'vanilladeploy[serve]'"),
])
def test_a_missing_part_names_its_fix(monkeypatch: pytest.MonkeyPatch, module: str, capability: str,
                                      fix: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    if module == "pytriton":
        monkeypatch.setattr("importlib.util.find_spec",
                            lambda name, *a, real=__import__("importlib.util").util.find_spec:
                            None if name == "pytriton" else real(name, *a))
    cap = _caps()[capability]
    assert not cap["ready"] and cap["fix"] == fix, cap
    assert cap["reason"]


def test_tensorrt_whose_libraries_fail_to_load_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = types.ModuleType("tensorrt")
    broken.__file__ = "/site-packages/tensorrt/__init__.py"
    broken.__version__ = "10.13.0"

    def no_libraries(*args: object) -> None:
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    broken.Logger = type("Logger", (), {"WARNING": 1, "__init__": lambda self, *a: None})
    broken.Builder = no_libraries
    monkeypatch.setitem(sys.modules, "tensorrt", broken)
    part = _parts()["tensorrt"]
    assert not part["ok"] and part["version"] == "10.13.0" and "libnvinfer" in part["detail"]


def test_everything_optional_missing_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("onnxruntime", "onnxsim", "matplotlib", "torchvision", "tritonclient", "tensorrt", "pytriton"):
        monkeypatch.setitem(sys.modules, module, None)
    info = diagnose().as_dict()
    assert not any(c["ready"] for c in info["capabilities"] if c["command"] in ("export", "serve, serve-bench"))
    json.dumps(info)


def test_cli_doctor_table_and_json() -> None:
    runner = CliRunner()
    table = runner.invoke(app, ["doctor"])
    assert table.exit_code == 0 and "export --trt" in table.output and "onnxruntime" in table.output
    as_json = runner.invoke(app, ["doctor", "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.output)["capabilities"]
