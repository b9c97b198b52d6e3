"""INT8 (exporters/int8.py, vanilladeploy/int8_export.py, ``export --precision int8``): symmetric QDQ on every Conv,
runnable in ONNX Runtime, deterministic calibration, held-out images kept out of calibration, the failure path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image
from typer.testing import CliRunner

from exporters.int8 import check_qdq, quantization_scales, quantize_qdq
from exporters.runners import OnnxRuntimeRunner
from exporters.trt_compat import check_trt_compat
from test_evaluate import make_folder
from vanilladeploy.cli import app
from vanilladeploy.evaluate import evaluate
from vanilladeploy.export import ExportOptions, export_checkpoint
from vanilladeploy.images import scan_folder
from vanilladeploy.int8_export import split_folder

IMG = 64


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("calib") / "images", classes=4, per_class=6, seed=5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Path:
    out = tmp_path_factory.mktemp("int8") / "out"
    result = export_checkpoint("vanillanet_5", ExportOptions(out_dir=out, img_size=IMG, precision="int8", calib=images,
                                                             calib_count=8, min_agreement=0.0))
    assert result.error is None
    return out


def test_every_conv_reads_symmetric_int8_through_qdq(exported: Path) -> None:
    model = onnx.load(exported / "vanillanet_5.int8.onnx")
    assert check_qdq(model) == []
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 9  # 5 dense + 4 depthwise: nothing left in float
    for conv in convs:
        for name in conv.input[:2]:
            dq = producers[name]
            assert dq.op_type == "DequantizeLinear"
            zero = inits[dq.input[2]]
            assert zero.dtype == np.int8 and not zero.any()
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["precision"] == "int8" and meta["calibration_method"] == "minmax" and meta["variant"] == "vanillanet_5"
    assert check_trt_compat(model), "TensorRT's parser would refuse the QDQ graph"


def test_runs_in_onnxruntime_close_to_fp32(exported: Path) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, IMG, IMG), dtype=np.float32)
    with OnnxRuntimeRunner(exported / "vanillanet_5.int8.onnx") as runner:
        y = runner.infer(x)
    with OnnxRuntimeRunner(exported / "vanillanet_5.onnx") as runner:
        ref = runner.infer(x)
    assert y.shape == ref.shape and np.isfinite(y).all()
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.2  # quantized, not broken


def test_report_records_calibration_and_holdout(exported: Path, images: Path) -> None:
    int8 = json.loads((exported / "vanillanet_5.report.json").read_text())["int8"]
    folder = scan_folder(images)
    split = split_folder(folder, calib_count=8, holdout_count=256)
    assert int8["calibration"]["images"] == 8 and int8["holdout"]["images"] == 16
    assert int8["calibration"]["files_sha256"] == split.files_sha256(folder)
    assert int8["preprocessing"]["img_size"] == IMG and int8["verified"] is True
    assert 0 <= int8["verification"]["agreement_top1"] <= 100


def test_calibration_is_deterministic(exported: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((2, 3, IMG, IMG), dtype=np.float32) for _ in range(3)]
    for method in ("minmax", "entropy"):
        a = quantize_qdq(exported / "vanillanet_5.onnx", tmp_path / f"a-{method}.onnx", batches, method=method)
        b = quantize_qdq(exported / "vanillanet_5.onnx", tmp_path / f"b-{method}.onnx", list(batches), method=method)
        sa, sb = quantization_scales(onnx.load(a.path)), quantization_scales(onnx.load(b.path))
        assert sa.keys() == sb.keys() and len(sa) > 9
        assert all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_held_out_images_are_not_used_for_calibration(images: Path, tmp_path: Path) -> None:
    folder = scan_folder(images)
    split = split_folder(folder, calib_count=8, holdout_count=256)
    assert not set(split.calibration) & set(split.holdout) and len(split.calibration) + len(split.holdout) == 24
    changed = tmp_path / "images"
    shutil.copytree(images, changed)
    for i in split.holdout:  # replace every held-out image: the calibration must not notice
        Image.fromarray(np.zeros((70, 90, 3), np.uint8)).save(changed / folder.files[i].relative_to(images))
    scales = []
    for data, out in ((images, tmp_path / "a"), (changed, tmp_path / "b")):
        export_checkpoint("vanillanet_5", ExportOptions(out_dir=out, img_size=IMG, precision="int8", calib=data,
                                                        calib_count=8, min_agreement=0.0))
        scales.append(quantization_scales(onnx.load(out / "vanillanet_5.int8.onnx")))
    assert all(np.array_equal(scales[0][k], scales[1][k]) for k in scales[0])


def test_low_agreement_publishes_unverified_and_exits_1(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", "vanillanet_5", "--img-size", str(IMG), "--precision", "int8",
                                      "--calib", str(images), "--calib-count", "8", "--min-agreement", "100",
                                      "--out", str(out)])
    report = json.loads((out / "vanillanet_5.report.json").read_text())
    agreement = report["int8"]["verification"]["agreement_top1"]
    if agreement == 100.0:  # an untrained model rarely agrees fully on 16 images; say so if it did
        pytest.skip("the random-weight model agreed 100% here; the failure path needs a disagreement")
    assert result.exit_code == 1 and "below --min-agreement 100" in result.output, result.output
    assert (out / "vanillanet_5.int8.onnx").is_file() and report["int8"]["verified"] is False


def test_eval_reports_int8_agreement(exported: Path, images: Path) -> None:
    info = evaluate([str(exported / "vanillanet_5.onnx"), str(exported / "vanillanet_5.int8.onnx")], images).as_dict()
    row = info["artifacts"][1]
    assert row["kind"] == "onnx int8" and row["agreement_top1"] is not None and row["mean_rel_l2"] > 0


def test_too_few_images_is_refused_before_calibrating(images: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "vanillanet_5", "--img-size", str(IMG), "--precision", "int8",
                                      "--calib", str(images), "--calib-count", "24", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "none held out" in result.output and not (tmp_path / "o").exists()


def test_trt_int8_without_tensorrt_exits_3_with_the_qdq_onnx_verified(images: Path, tmp_path: Path) -> None:
    from exporters.trt_plan import tensorrt_missing

    if tensorrt_missing() is None:
        pytest.skip("TensorRT and a GPU are present: tests/test_tensorrt_engine.py builds the engines")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", "vanillanet_5", "--img-size", str(IMG), "--precision", "int8",
                                      "--calib", str(images), "--calib-count", "8", "--min-agreement", "0",
                                      "--trt", "--out", str(out)])
    assert result.exit_code == 3 and "pip install 'vanilladeploy[trt]'" in result.output, result.output
    report = json.loads((out / "vanillanet_5.report.json").read_text())
    assert report["int8"]["verified"] and report["tensorrt"]["status"] == "not built"
    line10, line11 = report["tensorrt"]["trtexec"]["tensorrt10"], report["tensorrt"]["trtexec"]["tensorrt11"]
    assert "vanillanet_5.int8.onnx" in line10 and "--int8" in line10  # explicit quantization from the QDQ graph
    assert "vanillanet_5.int8.onnx" in line11 and "--int8" not in line11  # TensorRT 11: strongly typed, no flag
    assert "vanillanet_5.int8.engine" in line10
