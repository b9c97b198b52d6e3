"""Every variant, from an official-format training checkpoint, through the real CLI at 224x224 (slow).

This is the issue's "done when": simplified ONNX, graph contract held, ONNX Runtime within 1e-5 of the
training-form reference, and ``vanilladeploy check`` finds the simplified graph TensorRT-compatible. Weights are
random with randomized BatchNorm statistics (no trained weights here).
"""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import ALL_VARIANTS, official_checkpoint, random_model
from test_cli import run

from vanilladeploy.models.vanillanet import VARIANTS

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_official_checkpoint_exports_through_cli(variant: str, tmp_path: Path) -> None:
    train = random_model(variant, seed=11, num_classes=1000)
    path = tmp_path / f"{variant}-checkpoint-best-ema.pth"
    torch.save(official_checkpoint(train.state_dict(), variant=variant, epoch=299), path)  # model = model_ema
    del train
    start = time.perf_counter()
    result = run("export", path, "--out", tmp_path / "out")
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / f"{variant}.report.json").read_text())
    torch_check, ort_check = report["verification"]["torch"], report["verification"]["onnxruntime"]
    assert torch_check["passed"] and torch_check["rel_l2"] <= 1e-5
    assert ort_check["passed"] and ort_check["rel_l2"] <= 1e-5
    contract = report["onnx"]["contract"]
    assert contract["passed"] and contract["op_counts"]["Conv"] == VARIANTS[variant].depth
    check = run("check", tmp_path / "out" / f"{variant}.onnx", "--json")
    assert check.exit_code == 0 and json.loads(check.output)["errors"] == [], check.output
    print(f"\n{variant}: torch rel {torch_check['rel_l2']:.2e}, ORT rel {ort_check['rel_l2']:.2e}, "
          f"{contract['nodes']} nodes, export {seconds:.1f} s")
    path.unlink()  # up to 1.9 GB of checkpoint and 1 GB of artifacts per variant: pytest keeps tmp_path
    shutil.rmtree(tmp_path / "out")


def test_x1_5_twins_need_arch_without_args(tmp_path: Path) -> None:
    deploy = random_model("vanillanet_13_x1_5", deploy=True, seed=12)
    path = tmp_path / "bare.pth"
    torch.save(deploy.state_dict(), path)
    result = run("export", path, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "--arch" in result.output
    assert not (tmp_path / "out").exists()
    result = run("export", path, "--out", tmp_path / "out", "--arch", "vanillanet_13_x1_5_ada_pool")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "vanillanet_13_x1_5_ada_pool.report.json").read_text())
    assert report["architecture"]["detected_from"] == "--arch" and report["onnx"]["contract"]["nodes"] == 46
