"""vanilladeploy/doctor.py: the truth on this machine, and parts made missing or broken (monkeypatched imports):
each gives its own reason and install line, and doctor never raises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import AMX, AVX2_ONLY, AVX512_BF16_NO_AMX, cpu_flags_of, missing_in_ci
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


def test_serving_is_ready_where_the_serve_extra_is_installed() -> None:
    """CI installs the serve extra: doctor must report serve, repo and the Triton binary ready there (elsewhere a
    machine without the extra skips, with doctor's own reason)."""
    parts, caps = _parts(), _caps()
    not_ready = {name: caps[name]["reason"] for name in ("serve, serve-bench", "repo") if not caps[name]["ready"]}
    if not parts["tritonserver"]["ok"]:
        not_ready["tritonserver"] = parts["tritonserver"]["detail"]
    if not_ready:
        missing_in_ci(f"doctor reports serving not ready: {not_ready}")
    assert parts["tritonserver"]["version"].startswith("nvidia-pytriton ")
    assert Path(parts["tritonserver"]["detail"]).name == "tritonserver" and parts["tritonclient"]["ok"]
    table = CliRunner().invoke(app, ["doctor", "--json"])
    shown = {c["command"]: c["ready"] for c in json.loads(table.output)["capabilities"]}
    assert shown["serve, serve-bench"] is True and shown["repo"] is True


@pytest.mark.parametrize(("module", "capability", "fix"), [
    ("onnxsim", "export", "pip install vanilladeploy"),
    ("onnxruntime", "export", "pip install vanilladeploy"),
    ("matplotlib", "bench: baselines + plot", "pip install 'vanilladeploy[bench]'"),
    ("torchvision", "bench: baselines + plot", "pip install 'vanilladeploy[bench]'"),
    ("tritonclient", "serve, serve-bench", "pip install 'vanilladeploy[serve]'"),
    ("pytriton", "serve, serve-bench", "pip install 'vanilladeploy[serve]'"),
    ("kserve", "deploy --kserve, --k8s", "pip install 'vanilladeploy[deploy]'"),
    ("kubernetes", "deploy --kserve, --k8s", "pip install 'vanilladeploy[deploy]'"),
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


ROOT = Path(__file__).resolve().parents[1]


def test_doctor_runs_with_onnx_unimportable(tmp_path: Path) -> None:
    """A real process in which ``import onnx`` raises ImportError (a package of that name shadows the real one):
    ``vanilladeploy doctor`` still exits 0 and reports onnx — and what needs it — as missing."""
    shadow = tmp_path / "onnx"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('onnx made unimportable for this test')\n")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, "-m", "vanilladeploy", "doctor", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    parts = {c["name"]: c for c in info["components"]}
    caps = {c["command"]: c for c in info["capabilities"]}
    assert not parts["onnx"]["ok"] and "onnx made unimportable" in parts["onnx"]["detail"]
    assert not caps["export"]["ready"] and caps["export"]["reason"].startswith("onnx: ImportError")
    assert not caps["bench: onnxruntime (cpu)"]["ready"] and "onnx" in caps["bench: onnxruntime (cpu)"]["reason"]
    assert caps["bench: torch (cpu)"]["ready"] or caps["bench: torch (cuda)"]["ready"]


def test_gpu_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """What doctor says about a GPU, from torch.cuda's report functions made to report one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    part = _parts()["torch"]
    assert part["ok"] and part["detail"] == "CUDA 12.8: NVIDIA H100 80GB HBM3 (compute capability 9.0)"
    caps = _caps()
    assert "bench: torch (cuda)" in caps and "bench: torch (cpu)" not in caps
    from vanilladeploy.runtimes.trt_plan import tensorrt_missing

    assert caps["export --trt"]["ready"] == (tensorrt_missing() is None)  # with a GPU, it is TensorRT that decides
    table = CliRunner().invoke(app, ["doctor"])
    assert table.exit_code == 0 and "compute capability 9.0" in table.output and "NVIDIA H100" in table.output


def test_install_lines_come_from_the_one_table() -> None:
    from vanilladeploy.doctor import TRT_INSTALL
    from vanilladeploy.extras import install_hint
    from vanilladeploy.runtimes.trt_plan import INSTALL_HINT

    assert TRT_INSTALL == INSTALL_HINT == install_hint("trt")
    assert TRT_INSTALL == "pip install 'vanilladeploy[trt]' on a machine with an NVIDIA GPU and driver"
    assert install_hint("core") == "pip install vanilladeploy"


@pytest.mark.parametrize(("cpu", "bf16", "int8"), [(AVX2_ONLY, False, False), (AVX512_BF16_NO_AMX, True, True),
                                                   (AMX, True, True)])
def test_openvino_and_the_cpus_bf16_and_int8_readiness(monkeypatch: pytest.MonkeyPatch, cpu: str,
                                                       bf16: bool, int8: bool) -> None:
    flags = cpu_flags_of(cpu)  # a real CPU's description (tests/fixtures/cpuinfo)
    monkeypatch.setattr("vanilladeploy.doctor.cpu_flags", lambda: flags)
    caps, parts = _caps(), _parts()
    assert parts["openvino"]["ok"] and "CPU plugin" in parts["openvino"]["detail"]
    assert caps["export --openvino, eval --runtime openvino"]["ready"]
    assert caps["OpenVINO bf16"]["ready"] == bf16
    if not bf16:
        assert "avx512_bf16" in caps["OpenVINO bf16"]["reason"] and "amx_bf16" in caps["OpenVINO bf16"]["reason"]
    assert caps["int8 kernels (VNNI/AMX)"]["ready"] == int8


def test_one_row_per_runtime_of_the_one_table() -> None:
    from vanilladeploy.runtimes import RUNTIMES

    rows = [c for c in _caps() if c.startswith("runtime ")]
    assert [r.split(":")[0].removeprefix("runtime ") for r in rows] == list(RUNTIMES)
    caps = _caps()
    assert caps["runtime onnxruntime: fp32/fp16/int8 on cpu/cuda"]["ready"]  # the core install has it
    assert not caps["runtime tensorrt: fp32/fp16/int8 on cuda"]["ready"] or _trt_here()


def _trt_here() -> bool:
    from vanilladeploy.runtimes.trt_plan import tensorrt_missing

    return tensorrt_missing() is None
