"""The export report (vanilladeploy/pipeline/report.py, filled by the steps in vanilladeploy/pipeline/): the
``<variant>.report.json`` an export writes is byte for byte the one the code wrote before the report was typed.

Each scenario exports through the real CLI and compares its report with ``tests/fixtures/report/<scenario>.json``,
the file the untyped code (a ``dict`` filled by string keys) wrote for the same command, verbatim except that the
scenario's temporary directory is spelled ``<tmp>``. Both files must be exactly ``json.dumps(indent=2,
ensure_ascii=False) + "\\n"`` of themselves (the formatting), and after masking they must be equal as text: every
key, its order, every value. What is masked, and nothing else:

- **run-dependent**, always: ``created`` (the clock); the values under ``tool`` and ``openvino.openvino`` (installed
  versions); the values under ``timings_s`` and ``int8.latency_ms.*_median_ms`` (a stopwatch); ``tensorrt.reason``
  (why no engine could be built here: TensorRT absent, only its stubs, or no GPU). Their keys and order still count.
- **paths**: the scenario's directory becomes ``<tmp>`` inside every string (source path, calibration folder, worst
  image, trtexec lines); the rest of each string is compared.
- **machine-dependent**, only where this machine differs from ``fixtures/report/machine.json`` (CPU model and flags,
  cores, torch threads, library versions): measured errors and agreements (:data:`MEASURED` keys anywhere, plus each
  scenario's ``measured`` paths, e.g. the layers an automatic int8 fallback chose) and the artifacts' sha256 and size
  (:data:`MACHINE_DEPENDENT`). Measurements come from CPU kernels whose rounding depends on the instruction set and
  the thread count (a 1-thread run changes ``rel_l2`` in the 2nd digit); the artifacts embed versions and int8 weights
  calibrated on this CPU. On a machine like the one that wrote the fixtures they are compared byte for byte.

To rewrite the fixtures (only when the report's format changes on purpose): ``VANILLADEPLOY_WRITE_REPORT_FIXTURES=1
pytest tests/test_report.py -m "slow or not slow"``.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import official_checkpoint, random_model
from test_evaluate import make_folder
from typer.testing import CliRunner

from vanilladeploy.cli import app
from vanilladeploy.machine import parse_cpu_flags
from vanilladeploy.runtimes.trt_plan import tensorrt_missing

FIXTURES = Path(__file__).parent / "fixtures" / "report"
MACHINE = FIXTURES / "machine.json"
WRITE = os.environ.get("VANILLADEPLOY_WRITE_REPORT_FIXTURES") == "1"
MASK = "<masked>"
RUN_DEPENDENT = ("created", "tool.*", "openvino.openvino", "timings_s.*", "int8.latency_ms.*_median_ms",
                 "tensorrt.reason", "artifacts.*.xml.sha256", "artifacts.*.xml.bytes")
"""The OpenVINO IR's .xml differs between two runs of the same command (seen in CI), so its digest is no fixture."""
MACHINE_DEPENDENT = ("artifacts.*.sha256", "artifacts.*.bytes")
"""The artifacts' bytes: they embed versions (vanilladeploy's, onnx's …) and int8 weights calibrated on this CPU."""
MEASURED = frozenset({"rel_l2", "max_abs", "rel_l2_per_input", "mean_rel_l2", "agreement_top1", "worst", "agree",
                      "decisive", "decisive_agree"})
"""Keys whose values are measured on this machine's kernels (verification records, certificates, int8 rows)."""
VN5_64 = ("vanillanet_5", "--img-size", "64")


def _images(tmp: Path) -> None:
    make_folder(tmp / "images", classes=4, per_class=10, seed=5)  # 40: 8 calibrate, 32 held out


def _deploy_checkpoint(tmp: Path) -> None:
    torch.save({"model": random_model("vanillanet_5", deploy=True, seed=2).state_dict()}, tmp / "vn5_deploy.pth")


def _early_checkpoint(tmp: Path) -> None:
    state = random_model("vanillanet_5", seed=3).state_dict()
    torch.save(official_checkpoint(state, variant="vanillanet_5", epoch=50), tmp / "checkpoint-50.pth")


@dataclass(frozen=True)
class Scenario:
    args: tuple[str, ...]
    """After ``export``; ``{tmp}`` is the scenario's directory (the output goes to ``{tmp}/out``)."""
    exit_code: int = 0
    setup: Callable[[Path], None] | None = None
    measured: tuple[str, ...] = ()
    """Dotted paths (fnmatch) that are machine-dependent besides the :data:`MEASURED` keys."""
    needs_openvino: bool = False
    without_tensorrt: bool = False
    """The report's ``tensorrt`` section is the "not built" one: skipped where TensorRT can build."""


SCENARIOS = {
    "fp32": Scenario(VN5_64),
    "fp16_openvino": Scenario((*VN5_64, "--precision", "fp16", "--openvino"), needs_openvino=True),
    "fp16_trt": Scenario((*VN5_64, "--precision", "fp16", "--trt", "--trt-profile", "1/2/4"), exit_code=3,
                         without_tensorrt=True),
    "int8": Scenario((*VN5_64, "--precision", "int8", "--calib", "{tmp}/images", "--calib-count", "8",
                      "--min-agreement", "0", "--fallback", "stem/conv,cls/conv"), setup=_images),
    "int8_auto": Scenario((*VN5_64, "--precision", "int8", "--calib", "{tmp}/images", "--calib-count", "8",
                           "--min-agreement", "100", "--max-rel-l2", "1e-9", "--max-fallback", "1"), exit_code=1,
                          setup=_images, measured=("int8.float_layers", "int8.fallback.float_layers",
                                                   "int8.fallback.steps", "int8.sensitivity",
                                                   "int8.calibration.quantized_convs")),
    "deploy_form": Scenario(("{tmp}/vn5_deploy.pth", "--img-size", "32"), setup=_deploy_checkpoint),
    "inexact": Scenario(("{tmp}/checkpoint-50.pth", "--allow-inexact", "--img-size", "32", "--static-batch", "1",
                         "--no-simplify"), setup=_early_checkpoint),
}
SLOW = {"int8_auto"}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor())
    field = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines[:30])}
    return {"cpu": cpu, "family_model": f"{field.get('cpu family')}/{field.get('model')}",
            "flags": sorted(parse_cpu_flags("\n".join(lines))),  # "AMD EPYC" names AVX2-only and AVX-512 CPUs alike
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "versions": {d: _version(d) for d in ("numpy", "onnx", "onnxruntime", "onnxsim", "openvino", "pillow",
                                                  "torch", "vanilladeploy")}}


def _dump(report: Any) -> str:
    """As the export writes a report."""
    return json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _mask(node: Any, patterns: tuple[str, ...], keys: frozenset[str], path: str = "") -> Any:
    if path and (any(fnmatch.fnmatchcase(path, p) for p in patterns) or path.rpartition(".")[2] in keys):
        return MASK
    if isinstance(node, dict):
        return {k: _mask(v, patterns, keys, f"{path}.{k}" if path else k) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask(v, patterns, keys, f"{path}.{i}") for i, v in enumerate(node)]
    return node


def _export(scenario: Scenario, tmp: Path) -> str:
    if scenario.setup is not None:
        scenario.setup(tmp)
    args = [a.replace("{tmp}", str(tmp)) for a in scenario.args]
    result = CliRunner().invoke(app, ["export", *args, "--out", str(tmp / "out")])
    assert result.exit_code == scenario.exit_code, result.output
    written = tmp / "out" / "vanillanet_5.report.json"  # every scenario exports a vanillanet_5
    return written.read_text(encoding="utf-8").replace(str(tmp), "<tmp>")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SCENARIOS])
def test_the_report_is_byte_compatible(name: str, tmp_path: Path) -> None:
    scenario = SCENARIOS[name]
    if scenario.needs_openvino:
        pytest.importorskip("openvino", reason="the scenario exports --openvino")
    if scenario.without_tensorrt and tensorrt_missing() is None:
        pytest.skip("TensorRT can build here: the report's tensorrt section is the built one, not the fixture's")
    new = _export(scenario, tmp_path)
    fixture = FIXTURES / f"{name}.json"
    if WRITE:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        fixture.write_text(new, encoding="utf-8")
        MACHINE.write_text(_dump(_machine()), encoding="utf-8")
        pytest.skip(f"wrote {fixture}")
    reference = fixture.read_text(encoding="utf-8")
    for text in (new, reference):
        assert text == _dump(json.loads(text)), "not the export's JSON formatting"
    strict = json.loads(MACHINE.read_text(encoding="utf-8")) == _machine()
    patterns = RUN_DEPENDENT + (() if strict else MACHINE_DEPENDENT + scenario.measured)
    keys = frozenset() if strict else MEASURED
    masked_new, masked_reference = (_dump(_mask(json.loads(t), patterns, keys)) for t in (new, reference))
    assert masked_new.splitlines() == masked_reference.splitlines(), f"strict={strict}"
