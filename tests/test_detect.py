"""vanilladeploy.detect and the paths that take an exported detector: preprocessing, detect(), box agreement,
--openvino, check, eval, the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import require
from detection_fixtures import save_detector
from PIL import Image
from typer.testing import CliRunner

import vanilladeploy as vd
from vanilladeploy.cli import app
from vanilladeploy.detect import BoxAgreement, Detections, DetPreprocess
from vanilladeploy.errors import UsageError

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A RetinaNet (widths / 8) exported with --openvino: (checkpoint, export directory)."""
    require("openvino", "export --openvino (the openvino extra)")
    root = tmp_path_factory.mktemp("det")
    ckpt = save_detector(root / "retinanet.pth")
    result = runner.invoke(app, ["export", str(ckpt), "--out", str(root / "out"), "--openvino", "--verify-sizes",
                                 "320x480,256x320"])
    assert result.exit_code == 0, result.output
    return ckpt, root / "out"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(300, 500), (480, 640), (200, 900)]):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / f"{i}.png")
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


def test_keep_ratio_resize_and_padding_are_mmdetections() -> None:
    pre = DetPreprocess()
    assert pre.resized_size(640, 480) == (1067, 800)  # short side to 800
    assert pre.resized_size(4000, 1000) == (1333, 333)  # long side capped at 1333
    x, scale, size = pre(Image.new("RGB", (640, 480), (124, 116, 104)))
    assert x.shape == (1, 3, 800, 1088) and size == (640, 480) and scale == (1067 / 640, 800 / 480)
    assert np.abs(x[0, :, :800, :1067]).max() < 0.02 and (x[0, :, :, 1067:] == 0).all()


def test_box_agreement_matches_by_label_and_iou() -> None:
    ref = Detections(np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32), np.array([0.9, 0.8], np.float32),
                     np.array([1, 2]))
    same = BoxAgreement()
    same.add(ref, ref)
    assert (same.recall, same.precision, same.mean_iou) == (1.0, 1.0, 1.0)
    moved = Detections(ref.boxes + np.array([[1, 0, 1, 0], [0, 0, 0, 0]], np.float32), ref.scores - 0.01,
                       np.array([1, 3]))  # first box shifted by 1 px, second relabelled
    a = BoxAgreement()
    a.add(moved, ref)
    assert a.matched == 1 and a.recall == 0.5 and a.mean_iou == pytest.approx(90 / 110)
    assert a.max_score_diff == pytest.approx(0.01, abs=1e-6)


def test_openvino_ir_is_verified_against_onnxruntime(exported) -> None:
    _, out = exported
    report = json.loads((out / "retinanet_custom.report.json").read_text())
    fp32 = report["openvino"]["fp32"]
    assert fp32["passed"] and fp32["recall"] >= 0.99 and fp32["mean_iou"] >= 0.999
    assert (out / "retinanet_custom.xml").is_file() and (out / "retinanet_custom.bin").is_file()
    bf16 = report["openvino"]["bf16"]
    assert "skipped" in bf16 or 0.5 < bf16["recall"] <= 1.0


def test_the_detector_graph_passes_the_tensorrt_check(exported) -> None:
    _, out = exported
    model = onnx.load(out / "retinanet_custom.onnx")
    constants = {t.name for t in model.graph.initializer}
    topks = [n for n in model.graph.node if n.op_type == "TopK"]
    assert len(topks) == 6 and all(n.input[1] in constants for n in topks)  # 5 levels + the final top 100
    assert "NonMaxSuppression" in {n.op_type for n in model.graph.node}
    result = runner.invoke(app, ["check", str(out / "retinanet_custom.onnx")])
    assert result.exit_code == 0 and "shapes 320x320/800x1344/1344x1344" in result.output, result.output
    bad = runner.invoke(app, ["check", str(out / "retinanet_custom.onnx"), "--trt-shapes", "800x1344"])
    assert bad.exit_code == 2 and "--trt-shapes" in bad.output


def test_detect_maps_boxes_back_to_the_image(exported, images: Path) -> None:
    _, out = exported
    with vd.load(out / "retinanet_custom.onnx") as model:
        det = model.detect(images / "1.png")
        x, (sx, sy), _ = model.preprocess(Image.open(images / "1.png"))
        raw = model.infer(x)[0]
    assert len(det) == len(raw) > 0 and det.names()[0].startswith("class_")
    assert (det.boxes >= 0).all() and (det.boxes[:, [0, 2]] <= 640).all() and (det.boxes[:, [1, 3]] <= 480).all()
    np.testing.assert_allclose(det.boxes, np.minimum(raw.boxes / np.float32([sx, sy, sx, sy]), [640, 480, 640, 480]),
                               rtol=1e-6)
    with pytest.raises(UsageError, match="not a readable ONNX"):
        vd.DetectorSession(out / "retinanet_custom.xml")


def test_eval_compares_two_detectors_box_by_box(exported, images: Path, tmp_path: Path) -> None:
    _, out = exported
    onnx_path = str(out / "retinanet_custom.onnx")
    result = runner.invoke(app, ["eval", onnx_path, onnx_path, "--data", str(images), "--runtime", "openvino",
                                 "--json-out", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "e.json").read_text())
    assert info["images"] == 3 and len(info["skipped"]) == 1
    row = info["artifacts"][1]
    assert row["runtime"] == "openvino fp32, fp32 graph" and row["passed"] and row["recall"] >= 0.99
    assert row["gate"]["min_recall"] == 0.99 and row["detections"] > 0  # the fp32 gate: the same math elsewhere
    arch = runner.invoke(app, ["eval", onnx_path, onnx_path, "--data", str(images), "--arch", "vanillanet_5"])
    assert arch.exit_code == 2 and "--arch is for classifiers" in arch.output


def test_the_api_exports_a_detector_and_refuses_what_it_cannot_do(exported, tmp_path: Path) -> None:
    ckpt, _ = exported
    result = vd.export(ckpt, out_dir=tmp_path / "b", part="backbone", verify_sizes="256x320")
    assert result.onnx.name == "retinanet_custom.backbone.onnx" and result.report["part"] == "backbone"
    with pytest.raises(UsageError, match="--img-size is not available for detection"):
        vd.export(ckpt, out_dir=tmp_path / "x", img_size=320)
    with pytest.raises(UsageError, match="--precision int8 needs --calib"):
        vd.export(ckpt, out_dir=tmp_path / "x", precision="int8")
    assert not (tmp_path / "x").exists()


def test_fp16_copy_keeps_the_post_processing_in_float32(exported, tmp_path: Path) -> None:
    ckpt, _ = exported
    result = vd.export(ckpt, out_dir=tmp_path / "h", precision="fp16", verify_sizes="256x320")
    model = onnx.load(result.out_dir / "retinanet_custom.fp16.onnx")
    halves = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert "stem.0.weight" in halves and "retina_cls.weight" in halves
    assert "coder/stds" not in halves and "nms/iou" not in halves
    nms = next(n for n in model.graph.node if n.op_type == "NonMaxSuppression")
    assert nms.name and "fp16" not in nms.input[0]
    check = result.report["verification"]["onnxruntime_fp16"]
    assert check["passed"] and check["recall"] >= 0.9 and check["mean_iou"] >= 0.9


def test_int8_is_published_only_when_its_gate_passes(exported, tmp_path: Path) -> None:
    """Random weights on noise images are a pessimistic stand-in for int8 (DESIGN §7): whichever way the gate goes
    on this CPU's int8 kernels, a published copy passed it and a refused one left nothing behind."""
    ckpt, _ = exported
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        Image.fromarray((rng.random((200 + 8 * i, 320, 3)) * 255).astype(np.uint8)).save(calib / f"{i}.png")
    out = tmp_path / "q"
    args = ["export", str(ckpt), "--out", str(out), "--part", "backbone", "--precision", "int8", "--calib",
            str(calib), "--calib-count", "2", "--verify-sizes", "256x320"]
    few = runner.invoke(app, args)
    assert few.exit_code == 2 and "16 more held out" in few.output and not out.exists()
    for i in range(6, 20):
        Image.fromarray((rng.random((240, 320, 3)) * 255).astype(np.uint8)).save(calib / f"{i}.png")
    result = runner.invoke(app, args)
    if result.exit_code == 0:
        int8 = json.loads((out / "retinanet_custom.backbone.report.json").read_text())["int8"]
        assert int8["verification"]["passed"] and int8["verification"]["mean_rel_l2"] <= 0.1
        assert int8["calibration"]["quantized_convs"] == 24 and int8["holdout"]["images"] == 16
        assert (out / "retinanet_custom.backbone.int8.onnx").is_file()
    else:
        assert result.exit_code == 1 and "rel. L2 from fp32" in result.output and not out.exists()


def test_repo_writes_a_triton_config_with_variable_height_and_width(exported, tmp_path: Path) -> None:
    _, out = exported
    result = runner.invoke(app, ["repo", str(out), "--out", str(tmp_path / "repo"), "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    from vanilladeploy.triton.config import parse_config

    cfg = parse_config((tmp_path / "repo" / "retinanet_custom" / "config.pbtxt").read_text())
    assert list(cfg.input[0].dims) == [3, -1, -1] and cfg.backend == "onnxruntime"
    outputs = {o.name: (list(o.dims), o.data_type, o.HasField("reshape")) for o in cfg.output}
    assert outputs["boxes"][0] == [100, 4] and outputs["labels"][0] == [100]
    assert outputs["num_detections"][0] == [1] and outputs["num_detections"][2]
    images = runner.invoke(app, ["repo", str(out), "--out", str(tmp_path / "r2"), "--images"])
    assert images.exit_code == 2 and "--images is for classifiers" in images.output and not (tmp_path / "r2").exists()
