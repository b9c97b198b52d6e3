"""vanilladeploy/runtimes/tensorrt.py on a real GPU with real TensorRT (10.x or 11.x): build, run, verify fp32, fp16 and
int8 (explicit quantization from the QDQ ONNX, verified against that int8 ONNX in ONNX Runtime, as export does).

Skipped, with the reason, where ``tensorrt`` or a CUDA GPU is missing (CI has neither); run with ``pytest -m gpu``
on a machine with both. Nothing here imitates TensorRT.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SMALL_IMG, random_model
from test_cli import export
from test_evaluate import make_folder

from vanilladeploy.exporters.fp16_graph import convert_to_fp16
from vanilladeploy.exporters.onnx_export import build_onnx
from vanilladeploy.exporters.qdq import quantize_qdq
from vanilladeploy.exporters.trt_compat import BatchProfile
from vanilladeploy.models.vanillanet import get_variant
from vanilladeploy.runtimes.runners import OnnxRuntimeRunner
from vanilladeploy.runtimes.trt_plan import EngineMismatchError, TrtBuildOptions, engine_sidecar, tensorrt_missing
from vanilladeploy.verify import (
    TOLERANCE_FP16,
    TOLERANCE_INT8_ENGINE,
    TOLERANCE_TRT_FP32,
    random_inputs,
    top1_agreement,
    verify_outputs,
)

MISSING = tensorrt_missing()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(MISSING is not None, reason=f"needs TensorRT and a CUDA GPU: "
                                                                           f"{MISSING}")]


@pytest.fixture(scope="module")
def onnx_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("trt")
    fp32 = build_onnx(random_model("vanillanet_5", deploy=True, seed=5).state_dict(), get_variant("vanillanet_5"),
                      act_num=3, img_size=SMALL_IMG)
    paths = {"fp32": directory / "m.onnx", "fp16": directory / "m.fp16.onnx"}
    onnx.save(fp32, paths["fp32"])
    onnx.save(convert_to_fp16(fp32), paths["fp16"])
    return paths


@pytest.fixture(scope="module")
def int8_onnx(onnx_paths: dict[str, Path]) -> Path:
    """The QDQ int8 ONNX of the fp32 model, calibrated on seeded random inputs (what bench does)."""
    path = onnx_paths["fp32"].with_name("m.int8.onnx")
    result = quantize_qdq(onnx_paths["fp32"], path, random_inputs(4, batch=2, img_size=SMALL_IMG, seed=11))
    assert result, result.problems
    return path


def _reference(path: Path, xs: list[np.ndarray]) -> list[np.ndarray]:
    with OnnxRuntimeRunner(path) as runner:
        return [runner.infer(x) for x in xs]


def _build(onnx_paths: dict[str, Path], precision: str, **kw: object):
    from vanilladeploy.runtimes.tensorrt import build_engine, strongly_typed_only

    source = onnx_paths["fp16" if precision == "fp16" and strongly_typed_only() else "fp32"]
    return build_engine(source, TrtBuildOptions(precision=precision, profile=BatchProfile(1, 2, 4), **kw))


@pytest.mark.parametrize("precision,tolerance", [("fp32", TOLERANCE_TRT_FP32), ("fp16", TOLERANCE_FP16)])
def test_build_run_verify(onnx_paths: dict[str, Path], precision: str, tolerance: float) -> None:
    from vanilladeploy.runtimes.tensorrt import TensorRTRunner

    built = _build(onnx_paths, precision)
    xs = random_inputs(3, batch=2, img_size=SMALL_IMG, seed=7) + random_inputs(1, batch=1, img_size=SMALL_IMG)
    with TensorRTRunner(built.plan) as runner:
        outputs = [runner.infer(x) for x in xs]
    references = _reference(onnx_paths["fp32"], xs)
    result = verify_outputs("tensorrt", outputs, references, tolerance=tolerance)
    assert result, result.summary()
    if precision == "fp16":
        assert top1_agreement(outputs, references, tolerance=tolerance)


def test_int8_build_run_verify(int8_onnx: Path) -> None:
    from vanilladeploy.runtimes.tensorrt import TensorRTRunner, build_engine

    built = build_engine(int8_onnx, TrtBuildOptions(precision="int8", profile=BatchProfile(1, 2, 4)))
    xs = random_inputs(3, batch=2, img_size=SMALL_IMG, seed=7) + random_inputs(1, batch=4, img_size=SMALL_IMG)
    with TensorRTRunner(built.plan) as runner:
        outputs = [runner.infer(x) for x in xs]
    references = _reference(int8_onnx, xs)  # an int8 engine answers for the int8 ONNX it was built from
    result = verify_outputs("tensorrt int8", outputs, references, tolerance=TOLERANCE_INT8_ENGINE)
    assert result, result.summary()
    assert top1_agreement(outputs, references, tolerance=TOLERANCE_INT8_ENGINE)


def test_export_trt_int8_through_the_cli(official_ckpt_path: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vanilladeploy.cli import app

    images = make_folder(tmp_path / "images", classes=4, per_class=10, seed=5)  # 8 calibrate, 32 held out
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(official_ckpt_path), "--out", str(out), "--img-size", "64",
                                      "--precision", "int8", "--calib", str(images), "--calib-count", "8",
                                      "--min-agreement", "0", "--trt", "--trt-profile", "4", "--verbose"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((out / "vanillanet_5.int8.engine.json").read_text())
    assert sidecar["verified"] and sidecar["precision"] == "int8"
    assert sidecar["onnx"]["name"] == "vanillanet_5.int8.onnx"
    report = json.loads((out / "vanillanet_5.report.json").read_text())
    assert report["tensorrt"]["verified"] and report["tensorrt"]["status"] == "built" and report["int8"]["verified"]
    assert report["tensorrt"]["verification"]["top1"]["total"] > 0


def test_cuda_graph_replay_matches_and_timing_cache_is_written(onnx_paths: dict[str, Path], tmp_path: Path) -> None:
    from vanilladeploy.runtimes.tensorrt import TensorRTRunner

    cache = tmp_path / "timing.cache"
    built = _build(onnx_paths, "fp32", timing_cache=cache)
    assert cache.stat().st_size > 0
    _build(onnx_paths, "fp32", timing_cache=cache)  # reused
    x = random_inputs(1, batch=2, img_size=SMALL_IMG, seed=9)[0]
    with TensorRTRunner(built.plan) as plain, TensorRTRunner(built.plan, cuda_graph=True) as graphed:
        expected = plain.infer(x)
        assert np.array_equal(graphed.infer(x), expected) and np.array_equal(graphed.infer(x), expected)


def test_engine_built_elsewhere_is_refused(onnx_paths: dict[str, Path]) -> None:
    from vanilladeploy.runtimes.tensorrt import TensorRTRunner

    built = _build(onnx_paths, "fp32")
    sidecar = engine_sidecar(trt_version=built.tensorrt_version, gpu_name="Some Other GPU",
                             compute_capability=(1, 0), opts=TrtBuildOptions(), onnx_sha256="0" * 64,
                             onnx_name="m.onnx", input_shape=(1, 3, SMALL_IMG, SMALL_IMG), build_s=1.0,
                             strongly_typed=built.strongly_typed)
    with pytest.raises(EngineMismatchError, match="not portable across GPUs"):
        with TensorRTRunner(built.plan, sidecar=sidecar):
            pass


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_trt_through_the_cli(official_ckpt_path: Path, tmp_path: Path, precision: str) -> None:
    import tensorrt

    out = tmp_path / "out"
    result = export(official_ckpt_path, out, "--trt", "--precision", precision, "--trt-profile", "4", "--verbose")
    assert result.exit_code == 0, result.output
    engine = out / f"vanillanet_5.{precision}.engine"
    sidecar = json.loads((out / f"vanillanet_5.{precision}.engine.json").read_text())
    assert sidecar["verified"] and sidecar["precision"] == precision and sidecar["profile"]["max"][0] == 4
    report = json.loads((out / "vanillanet_5.report.json").read_text())
    assert report["tensorrt"]["verified"] and report["tensorrt"]["status"] == "built"
    assert (out / f"vanillanet_5.{precision}.engine.build.log").stat().st_size > 0
    plain = tensorrt.Runtime(tensorrt.Logger(tensorrt.Logger.WARNING)).deserialize_cuda_engine(engine.read_bytes())
    assert plain is not None  # no custom header: any TensorRT loader (and trtexec --loadEngine) reads it


def test_engine_file_is_checked_against_its_sidecar(onnx_paths: dict[str, Path], tmp_path: Path) -> None:
    from vanilladeploy.runtimes.tensorrt import TensorRTRunner

    built = _build(onnx_paths, "fp32")
    engine = tmp_path / "m.fp32.engine"
    engine.write_bytes(built.plan)
    sidecar = engine_sidecar(trt_version="0.0.1", gpu_name="x", compute_capability=(1, 0), opts=TrtBuildOptions(),
                             onnx_sha256="0" * 64, onnx_name="m.onnx", input_shape=(1, 3, SMALL_IMG, SMALL_IMG),
                             build_s=1.0, strongly_typed=built.strongly_typed)
    (tmp_path / "m.fp32.engine.json").write_text(json.dumps(sidecar))
    with pytest.raises(EngineMismatchError, match="not portable across versions"):
        with TensorRTRunner(engine):
            pass
