"""vanilladeploy/pipeline/trt_export.py through the real CLI: ``export --trt`` where TensorRT or a GPU is missing still
exports and verifies the ONNX (and the fp16 copy), writes the trtexec lines, then exits 3 with one line naming
the fix."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest
import torch
from test_cli import export

without_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available(),
                                      reason="TensorRT and a GPU are present: the engine is built (tests/test_"
                                      "tensorrt_engine.py)")


def _report(out: Path) -> dict:
    return json.loads((out / "vanillanet_5.report.json").read_text())


@without_tensorrt
def test_trt_without_tensorrt_exports_verified_onnx_then_exits_3(official_ckpt_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = export(official_ckpt_path, out, "--trt", "--trt-profile", "1/2/8", "--timing-cache", tmp_path / "t.cache")
    assert result.exit_code == 3, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pip install 'vanilladeploy[trt]'" in errors[0] and "Traceback" not in result.output
    assert "ONNX was written and verified" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == [".vanilladeploy", "vanillanet_5.onnx",
                                                     "vanillanet_5.report.json", "vanillanet_5_deploy.pth"]
    report = _report(out)
    assert report["verification"]["onnxruntime"]["passed"] and report["verification"]["inputs"]["batch"] == 2
    trt = report["tensorrt"]
    assert trt["status"] == "not built" and "vanilladeploy[trt]" in trt["reason"] and "verified" not in trt
    assert trt["compatibility"]["passed"] and trt["profile"] == "1/2/8"
    args = shlex.split(trt["trtexec"]["tensorrt10"])
    assert f"--onnx={out / 'vanillanet_5.onnx'}" in args and f"--saveEngine={out / 'vanillanet_5.fp32.engine'}" in args
    assert "--maxShapes=input:8x3x32x32" in args and f"--timingCacheFile={tmp_path / 't.cache'}" in args
    assert not (tmp_path / "t.cache").exists()
    assert "trtexec --onnx=" in result.output  # printed for the user, too


@without_tensorrt
def test_trt_fp16_writes_a_verified_fp16_onnx(official_ckpt_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = export(official_ckpt_path, out, "--trt", "--precision", "fp16", "--static-batch", "1")
    assert result.exit_code == 3, result.output
    assert (out / "vanillanet_5.fp16.onnx").is_file()
    report = _report(out)
    fp16 = report["verification"]["onnxruntime_fp16"]
    assert fp16["passed"] and fp16["tolerance"] == 1e-2 and fp16["top1"]["total"] == 3
    assert "vanillanet_5.fp16.onnx" in report["artifacts"]
    lines = report["tensorrt"]["trtexec"]
    assert "--fp16" in shlex.split(lines["tensorrt10"]) and "vanillanet_5.onnx" in lines["tensorrt10"]
    assert "--fp16" not in shlex.split(lines["tensorrt11"]) and "vanillanet_5.fp16.onnx" in lines["tensorrt11"]
    assert report["tensorrt"]["profile"] == "1/1/1"


@pytest.mark.parametrize("extra,words", [
    (("--trt-profile", "8/1/2"), "MIN ≤ OPT ≤ MAX"),
    (("--workspace", "lots"), "size 'lots'"),
    (("--precision", "int4"), "'int4' is not one of 'fp32', 'fp16', 'int8'"),
    (("--precision", "int8"), "--precision int8 needs --calib DIR"),
    (("--static-batch", "2", "--trt-profile", "1/1/4"), "--static-batch 2 fixes the batch"),
])
def test_trt_usage_errors(official_ckpt_path: Path, tmp_path: Path, extra: tuple[str, ...], words: str) -> None:
    result = export(official_ckpt_path, tmp_path / "out", "--trt", *extra)
    assert result.exit_code == 2 and words in result.output, result.output
    assert not (tmp_path / "out").exists()
