"""vanilladeploy/check.py: ``vanilladeploy check model.onnx`` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from conftest import SMALL_IMG, random_model
from onnx import helper
from test_cli import run

from vanilladeploy.exporters.onnx_export import build_onnx
from vanilladeploy.models.vanillanet import get_variant


@pytest.fixture(scope="module")
def vanilla_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "vanillanet_5.onnx"
    deploy = random_model("vanillanet_5", deploy=True)
    onnx.save(build_onnx(deploy.state_dict(), get_variant("vanillanet_5"), act_num=3, img_size=SMALL_IMG), path)
    return path


def test_check_passes_a_vanillanet(vanilla_onnx: Path) -> None:
    result = run("check", vanilla_onnx)
    assert result.exit_code == 0 and "TensorRT-compatible" in result.output and "0 errors" in result.output
    info = json.loads(run("check", vanilla_onnx, "--json", "--trt-profile", "4").output)
    assert info["passed"] and info["profile"] == "1/1/4" and info["nodes"] == 18


def test_check_reports_a_planted_problem_and_exits_1(vanilla_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(vanilla_onnx)
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "Swish", "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    planted = tmp_path / "planted.onnx"
    onnx.save(model, planted)
    result = run("check", planted)
    assert result.exit_code == 1, result.output
    assert f"Swish '{relu.name}'" in result.output and "plugin" in result.output
    assert "not TensorRT-compatible" in result.output


@pytest.mark.parametrize("case", ["missing", "not onnx", "bad batch"])
def test_check_bad_input(vanilla_onnx: Path, tmp_path: Path, case: str) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 10)
    args = {"missing": (tmp_path / "none.onnx",), "not onnx": (junk,),
            "bad batch": (vanilla_onnx, "--trt-profile", "x")}
    result = run("check", *args[case])
    assert result.exit_code == 2 and result.output.startswith("error:") and "Traceback" not in result.output
