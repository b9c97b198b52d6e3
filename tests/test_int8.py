"""INT8 (exporters/qdq.py, vanilladeploy/pipeline/int8.py, ``export --precision int8``): symmetric QDQ on every Conv
(and a strict contract check), runnable in ONNX Runtime, deterministic calibration, held-out images kept out of
calibration, a fixed-batch graph, unreadable calibration images, the failure path (with and without --trt)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image
from test_evaluate import make_folder
from typer.testing import CliRunner

from vanilladeploy.cli import app
from vanilladeploy.evaluate import evaluate, open_artifact
from vanilladeploy.exporters.qdq import check_qdq, quantization_scales, quantize_qdq
from vanilladeploy.exporters.trt_compat import check_trt_compat
from vanilladeploy.images import Preprocess, load_image, scan_folder
from vanilladeploy.pipeline.export import ExportOptions, export_checkpoint
from vanilladeploy.pipeline.int8 import MIN_HOLDOUT, SPLIT_SEED, Int8Options, split_folder
from vanilladeploy.runtimes.runners import OnnxRuntimeRunner
from vanilladeploy.runtimes.trt_plan import tensorrt_missing

IMG = 64
CALIB = 8


def cli_export(images: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["export", "vanillanet_5", "--img-size", str(IMG), "--precision", "int8",
                                    "--calib", str(images), "--calib-count", str(CALIB), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 images: 8 to calibrate, 32 (MIN_HOLDOUT) held out."""
    return make_folder(tmp_path_factory.mktemp("calib") / "images", classes=4, per_class=10, seed=5)


@pytest.fixture(scope="module")
def clipping_images(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Path:
    """The same split, but the calibration images are flat grey and the held-out ones black/white noise: the
    calibrated activation ranges are far too narrow for the held-out images, so int8 disagrees with fp32 (measured:
    0% top-1 agreement; the split, the model and the calibration are all seeded, so this is deterministic)."""
    root = tmp_path_factory.mktemp("clip") / "images"
    shutil.copytree(images, root)
    folder = scan_folder(root)
    split = split_folder(folder, calib_count=CALIB, holdout_count=256)
    rng = np.random.default_rng(0)
    for i in split.calibration:
        grey = np.full((70, 90, 3), 128, np.uint8) + rng.integers(0, 2, (70, 90, 3), dtype=np.uint8)
        Image.fromarray(grey).save(folder.files[i])
    for i in split.holdout:
        Image.fromarray(rng.integers(0, 2, (70, 90, 3), dtype=np.uint8) * 255).save(folder.files[i])
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Path:
    out = tmp_path_factory.mktemp("int8") / "out"
    int8 = Int8Options(images, calib_count=CALIB, min_agreement=0.0)
    result = export_checkpoint("vanillanet_5", ExportOptions(out_dir=out, img_size=IMG, precision="int8", int8=int8))
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
    assert meta["img_size"] == str(IMG) and float(meta["crop_pct"]) == 224 / 256  # the preprocessing travels along
    assert json.loads(meta["preprocessing_sources"])["img_size"] == "--img-size"
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
    split = split_folder(folder, calib_count=CALIB, holdout_count=256)
    assert int8["calibration"]["images"] == CALIB and int8["holdout"]["images"] == 32
    assert int8["calibration"]["files_sha256"] == split.files_sha256(folder)
    assert int8["preprocessing"]["img_size"] == IMG and int8["verified"] is True
    fp32 = onnx.load(exported / "vanillanet_5.onnx")
    pre = Preprocess.from_metadata({p.key: p.value for p in fp32.metadata_props})
    with OnnxRuntimeRunner(exported / "vanillanet_5.onnx") as runner:
        answers = runner.infer(np.stack([load_image(folder.files[i], pre) for i in split.holdout])).argmax(1)
    majority = int(np.bincount(answers).max())  # what a model always answering fp32's commonest class agrees on
    agreeing = int8["verification"]["agreement_top1"] * 32 / 100  # a share of the 32 held-out images: k/32 ...
    assert agreeing == round(agreeing) and majority < agreeing <= 32, (majority, int8["verification"])  # 17 < 26 here
    assert int8["verification"]["passed"] is True and int8["verification"]["min_agreement"] == 0.0
    assert int8["calibration"]["method"] == "minmax" and int8["calibration"]["split_seed"] == SPLIT_SEED == 0


def test_reported_mean_and_worst_rel_l2_equal_a_hand_computation(exported: Path, images: Path) -> None:
    """The report's held-out figures, recomputed image by image: fp32 and int8 ONNX on the held-out split."""
    int8 = json.loads((exported / "vanillanet_5.report.json").read_text())["int8"]
    folder = scan_folder(images)
    holdout = split_folder(folder, calib_count=CALIB, holdout_count=256).holdout
    pre = Preprocess(img_size=int8["preprocessing"]["img_size"], crop_pct=int8["preprocessing"]["crop_pct"],
                     mean=tuple(int8["preprocessing"]["mean"]), std=tuple(int8["preprocessing"]["std"]))
    x = np.stack([load_image(folder.files[i], pre) for i in holdout])
    with OnnxRuntimeRunner(exported / "vanillanet_5.onnx") as fp32, OnnxRuntimeRunner(exported / int8["file"]) as q:
        reference, quantized = fp32.infer(x).astype(np.float64), q.infer(x).astype(np.float64)
    rel = np.linalg.norm(quantized - reference, axis=1) / np.linalg.norm(reference, axis=1)
    check = int8["verification"]
    assert check["mean_rel_l2"] == pytest.approx(rel.mean(), rel=1e-4) and rel.mean() > 0
    assert check["worst"]["rel_l2"] == pytest.approx(rel.max(), rel=1e-4)
    assert Path(check["worst"]["path"]) == folder.files[holdout[int(rel.argmax())]]
    agreement = 100.0 * (quantized.argmax(1) == reference.argmax(1)).mean()
    assert check["agreement_top1"] == pytest.approx(agreement, abs=1e-3)


def test_calibration_is_deterministic(exported: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((2, 3, IMG, IMG), dtype=np.float32) for _ in range(3)]
    for method in ("minmax", "entropy"):
        a = quantize_qdq(exported / "vanillanet_5.onnx", tmp_path / f"a-{method}.onnx", batches, method=method)
        b = quantize_qdq(exported / "vanillanet_5.onnx", tmp_path / f"b-{method}.onnx", list(batches), method=method)
        sa, sb = quantization_scales(onnx.load(a.path)), quantization_scales(onnx.load(b.path))
        assert sa.keys() == sb.keys() and len(sa) > 9
        assert all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_each_calibration_method_chooses_its_own_ranges(exported: Path, tmp_path: Path) -> None:
    """ONNX Runtime's quantize_static builds its entropy calibrator with 128 bins for 128 quantized bins, where
    the KL search has one candidate (the full range) and "entropy" equals "minmax"; ours must not."""
    rng = np.random.default_rng(2)
    batches = [np.abs(rng.standard_cauchy((2, 3, IMG, IMG))).astype(np.float32) for _ in range(3)]  # long tails
    scales = {m: quantization_scales(onnx.load(quantize_qdq(exported / "vanillanet_5.onnx", tmp_path / f"{m}.onnx",
                                                            batches, method=m).path))
              for m in ("minmax", "entropy", "percentile")}
    weights = {k for k in scales["minmax"] if np.ndim(scales["minmax"][k]) > 0}  # per-channel: calibration-free
    activations = sorted(set(scales["minmax"]) - weights)
    for method in ("entropy", "percentile"):
        assert any(not np.array_equal(scales[method][k], scales["minmax"][k]) for k in activations), method
        # a clipped range is never wider than the observed one
        assert all(float(scales[method][k]) <= float(scales["minmax"][k]) * (1 + 1e-6) for k in activations), method


def test_held_out_images_are_not_used_for_calibration(images: Path, tmp_path: Path) -> None:
    folder = scan_folder(images)
    split = split_folder(folder, calib_count=CALIB, holdout_count=256)
    assert not set(split.calibration) & set(split.holdout) and len(split.calibration) + len(split.holdout) == 40
    changed = tmp_path / "images"
    shutil.copytree(images, changed)
    for i in split.holdout:  # replace every held-out image: the calibration must not notice
        Image.fromarray(np.zeros((70, 90, 3), np.uint8)).save(changed / folder.files[i].relative_to(images))
    scales = []
    for data, out in ((images, tmp_path / "a"), (changed, tmp_path / "b")):
        int8 = Int8Options(data, calib_count=CALIB, min_agreement=0.0)
        export_checkpoint("vanillanet_5", ExportOptions(out_dir=out, img_size=IMG, precision="int8", int8=int8))
        scales.append(quantization_scales(onnx.load(out / "vanillanet_5.int8.onnx")))
    assert all(np.array_equal(scales[0][k], scales[1][k]) for k in scales[0])


def test_low_agreement_publishes_unverified_and_exits_1(clipping_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli_export(clipping_images, out)  # the default --min-agreement 99
    assert result.exit_code == 1 and "below --min-agreement 99" in result.output, result.output
    report = json.loads((out / "vanillanet_5.report.json").read_text())
    assert (out / "vanillanet_5.int8.onnx").is_file() and report["int8"]["verified"] is False
    assert report["int8"]["verification"]["agreement_top1"] < 50 and report["int8"]["holdout"]["images"] == 32


def test_low_agreement_with_trt_still_exits_1(clipping_images: Path, tmp_path: Path) -> None:
    """The int8 verification failure (exit 1) outranks TensorRT being missing (exit 3); the report says both."""
    out = tmp_path / "out"
    result = cli_export(clipping_images, out, "--trt")
    assert result.exit_code == 1 and "below --min-agreement 99" in result.output, result.output
    report = json.loads((out / "vanillanet_5.report.json").read_text())
    assert report["int8"]["verified"] is False and (out / "vanillanet_5.int8.onnx").is_file()
    if tensorrt_missing() is not None:
        assert report["tensorrt"]["status"] == "not built" and report["tensorrt"]["reason"]
    else:
        assert report["tensorrt"]["status"] == "built"


def test_a_fixed_batch_graph_calibrates_and_verifies(exported: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "static"
    int8 = Int8Options(images, calib_count=CALIB, min_agreement=0.0)
    result = export_checkpoint("vanillanet_5", ExportOptions(out_dir=out, img_size=IMG, static_batch=3,
                                                             precision="int8", int8=int8))
    assert result.error is None
    model = onnx.load(out / "vanillanet_5.int8.onnx")
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3 and check_qdq(model) == []
    int8 = result.report["int8"]
    assert int8["calibration"]["images"] == CALIB and int8["holdout"]["images"] == 32
    dynamic = quantization_scales(onnx.load(exported / "vanillanet_5.int8.onnx"))
    static = quantization_scales(model)  # 8 images regrouped 3+3+2(padded): min/max ranges unchanged
    assert dynamic.keys() == static.keys() and all(np.array_equal(dynamic[k], static[k]) for k in dynamic)
    info = evaluate([str(out / "vanillanet_5.onnx"), str(out / "vanillanet_5.int8.onnx")], images, batch=32).as_dict()
    assert info["images"] == 40 and info["artifacts"][1]["agreement_top1"] is not None


def test_unreadable_calibration_images_exit_2(images: Path, tmp_path: Path) -> None:
    data = tmp_path / "images"
    shutil.copytree(images, data)
    folder = scan_folder(data)
    for i in split_folder(folder, calib_count=CALIB, holdout_count=256).calibration:
        folder.files[i].write_bytes(b"\x89PNG not really a png")
    result = cli_export(data, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert f"none of the {CALIB} calibration images could be read ({CALIB} skipped" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_unreadable_held_out_images_below_the_minimum_exit_2(images: Path, tmp_path: Path) -> None:
    data = tmp_path / "images"
    shutil.copytree(images, data)
    folder = scan_folder(data)
    held_out = split_folder(folder, calib_count=CALIB, holdout_count=256).holdout
    for i in held_out[:1]:  # one unreadable: fewer readable held-out images than the 32 a verdict needs
        folder.files[i].write_bytes(b"\x89PNG not really a png")
    result = cli_export(data, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert f"only {len(held_out) - 1} of the {len(held_out)} held-out images could be read" in result.output
    assert not (tmp_path / "out").exists()


def test_eval_reports_int8_agreement(exported: Path, images: Path) -> None:
    info = evaluate([str(exported / "vanillanet_5.onnx"), str(exported / "vanillanet_5.int8.onnx")], images).as_dict()
    row = info["artifacts"][1]
    assert row["kind"] == "onnx int8" and row["agreement_top1"] is not None and row["mean_rel_l2"] > 0


@pytest.mark.parametrize(("count", "words"), [
    ("9", "40 images, but --calib-count 9 leaves 31 held out, fewer than the 32 needed to verify the int8 model; "
          "pass --calib-count 8"),
    ("40", "leaves 0 held out"),
])
def test_too_few_held_out_images_is_refused_before_calibrating(images: Path, tmp_path: Path, count: str,
                                                                words: str) -> None:
    assert MIN_HOLDOUT == 32
    result = CliRunner().invoke(app, ["export", "vanillanet_5", "--img-size", str(IMG), "--precision", "int8",
                                      "--calib", str(images), "--calib-count", count, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and words in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_a_small_folder_is_told_how_many_images_to_add(tmp_path: Path) -> None:
    small = make_folder(tmp_path / "small", classes=2, per_class=10, seed=1)
    result = cli_export(small, tmp_path / "o")
    assert result.exit_code == 2 and "20 images" in result.output, result.output
    assert f"add at least {CALIB + 32 - 20} images (or 13 with --calib-count 1)" in result.output, result.output


def test_int8_is_recognised_without_metadata(exported: Path, tmp_path: Path) -> None:
    model = onnx.load(exported / "vanillanet_5.int8.onnx")
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "foreign.onnx")
    assert open_artifact(str(tmp_path / "foreign.onnx")).kind == "onnx int8"


def _plant(model: onnx.ModelProto, name: str, array: np.ndarray) -> str:
    model.graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _stem_qdq(model: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]:
    """The stem Conv's data QuantizeLinear and DequantizeLinear, and its weight DequantizeLinear."""
    producers = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    data_dq, weight_dq = producers[conv.input[0]], producers[conv.input[1]]
    return producers[data_dq.input[0]], data_dq, weight_dq


def test_check_qdq_refuses_uint8_and_nonzero_zero_points(exported: Path) -> None:
    base = onnx.load(exported / "vanillanet_5.int8.onnx")
    assert check_qdq(base) == []

    def problems(plant) -> list[str]:
        model = onnx.ModelProto()
        model.CopyFrom(base)
        plant(model, *_stem_qdq(model))
        return check_qdq(model)

    def uint8_weight_without_zero_point(m, q, dq, wdq):  # no zero point: uint8 data would pass a lax check
        weights = {i.name: i for i in m.graph.initializer}
        w = numpy_helper.to_array(weights[wdq.input[0]])
        weights[wdq.input[0]].CopyFrom(numpy_helper.from_array((w.astype(np.int16) + 128).astype(np.uint8),
                                                               wdq.input[0]))
        del wdq.input[2]

    def nonzero_quantize_zero_point(m, q, dq, wdq):  # the DQ still says int8 0: only Q's own zero point is off
        q.input[2] = _plant(m, "planted_zp", np.array(3, dtype=np.int8))

    def quantize_without_zero_point(m, q, dq, wdq):  # QuantizeLinear's default output type is uint8
        del q.input[2]

    def uint8_dequantize_zero_point(m, q, dq, wdq):
        dq.input[2] = _plant(m, "planted_uint8_zp", np.array(0, dtype=np.uint8))

    assert any("uint8 data, not int8" in p for p in problems(uint8_weight_without_zero_point))
    assert any("QuantizeLinear" in p and "not int8 0" in p for p in problems(nonzero_quantize_zero_point))
    assert any("quantizes to uint8" in p for p in problems(quantize_without_zero_point))
    assert any("uint8" in p and "not int8 0" in p for p in problems(uint8_dequantize_zero_point))


def test_check_qdq_accepts_implicit_int8_zero_points(exported: Path) -> None:
    model = onnx.load(exported / "vanillanet_5.int8.onnx")
    q, dq, wdq = _stem_qdq(model)
    del wdq.input[2]  # int8 weights, no zero point: 0 by definition
    del q.input[2]
    q.attribute.append(onnx.helper.make_attribute("output_dtype", onnx.TensorProto.INT8))  # opset 21: int8, zero 0
    del dq.input[2]
    assert check_qdq(model) == []


def test_trt_int8_without_tensorrt_exits_3_with_the_qdq_onnx_verified(images: Path, tmp_path: Path) -> None:
    if tensorrt_missing() is None:
        pytest.skip("TensorRT and a GPU are present: tests/test_tensorrt_engine.py builds the engines")
    out = tmp_path / "out"
    result = cli_export(images, out, "--min-agreement", "0", "--trt")
    assert result.exit_code == 3 and "pip install 'vanilladeploy[trt]'" in result.output, result.output
    report = json.loads((out / "vanillanet_5.report.json").read_text())
    assert report["int8"]["verified"] and report["tensorrt"]["status"] == "not built"
    line10, line11 = report["tensorrt"]["trtexec"]["tensorrt10"], report["tensorrt"]["trtexec"]["tensorrt11"]
    assert "vanillanet_5.int8.onnx" in line10 and "--int8" in line10  # explicit quantization from the QDQ graph
    assert "vanillanet_5.int8.onnx" in line11 and "--int8" not in line11  # TensorRT 11: strongly typed, no flag
    assert "vanillanet_5.int8.engine" in line10


def _float_convs(model: onnx.ModelProto) -> set[str]:
    """The Convs whose weight is a float32 initializer (no DequantizeLinear): computed in float."""
    inits = {i.name: i for i in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits
            and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT}


def test_explicit_fallback_layers_are_exactly_the_float_convs(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli_export(images, out, "--min-agreement", "0", "--fallback", "stem/conv,cls/conv")
    assert result.exit_code == 0, result.output
    model = onnx.load(out / "vanillanet_5.int8.onnx")
    assert _float_convs(model) == {"stem/conv", "cls/conv"}
    assert check_qdq(model, keep_float=frozenset({"stem/conv", "cls/conv"})) == []
    assert check_qdq(model)  # without the list, the two float Convs break the contract
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["float_layers"]) == ["stem/conv", "cls/conv"]
    report = json.loads((out / "vanillanet_5.report.json").read_text())["int8"]
    assert report["float_layers"] == ["stem/conv", "cls/conv"] and report["fallback"]["mode"] == "layers"
    assert report["calibration"]["quantized_convs"] == 7 and "sensitivity" not in report  # no search was needed
    cost = report["latency_ms"]
    assert cost["runtime"] == "onnxruntime" and all(cost[f"{k}_median_ms"] > 0 for k in ("fp32", "int8", "mixed"))


def test_an_unknown_fallback_layer_is_refused_with_the_names(images: Path, tmp_path: Path) -> None:
    result = cli_export(images, tmp_path / "out", "--fallback", "stages.9/conv")
    assert result.exit_code == 2 and "stages.9/conv" in result.output and "stem/conv" in result.output
    assert not (tmp_path / "out").exists()


def test_auto_fallback_records_sensitivity_and_steps(clipping_images: Path, tmp_path: Path) -> None:
    """Calibrated on flat grey, judged on noise: no float layer rescues it (0 % → at most a few %), so auto tries
    up to --max-fallback, keeps the best, and still exits 1 with the model marked unverified."""
    out = tmp_path / "out"
    result = cli_export(clipping_images, out, "--max-fallback", "2")
    assert result.exit_code == 1 and "after keeping" in result.output, result.output
    int8 = json.loads((out / "vanillanet_5.report.json").read_text())["int8"]
    table = int8["sensitivity"]
    assert len(table) == 9 and sorted({s["kind"] for s in table}) == ["dense", "depthwise"]
    assert [s["agreement_top1"] for s in table] == sorted((s["agreement_top1"] for s in table), reverse=True)
    steps = int8["fallback"]["steps"]
    assert steps[0]["float_layers"] == [] and len(steps) == 3  # the full int8 model, then two fallback steps
    assert steps[1]["float_layers"] == [table[0]["layer"]] and steps[2]["float_layers"][:1] == [table[0]["layer"]]
    assert int8["verified"] is False and len(int8["float_layers"]) <= 2
    assert _float_convs(onnx.load(out / "vanillanet_5.int8.onnx")) == set(int8["float_layers"])


def test_fallback_none_searches_nothing(clipping_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli_export(clipping_images, out, "--fallback", "none")
    assert result.exit_code == 1 and "after keeping" not in result.output
    int8 = json.loads((out / "vanillanet_5.report.json").read_text())["int8"]
    assert int8["fallback"] == {"mode": "none", "max_fallback": 2, "float_layers": [], "steps": []}
    assert "sensitivity" not in int8 and int8["float_layers"] == []


def test_the_calib_count_hint_counts_readable_images(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", classes=4, per_class=12, seed=3)  # 48 readable images
    (folder / "class_0" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    hint = CliRunner().invoke(app, ["export", "vanillanet_5", "--img-size", str(IMG), "--precision", "int8",
                                    "--calib", str(folder), "--out", str(tmp_path / "o")])
    assert hint.exit_code == 2 and "49 images (1 unreadable)" in hint.output and "pass --calib-count 16" in \
        hint.output, hint.output
    done = CliRunner().invoke(app, ["export", "vanillanet_5", "--img-size", str(IMG), "--precision", "int8",
                                    "--calib", str(folder), "--calib-count", "16", "--min-agreement", "0",
                                    "--out", str(tmp_path / "o")])
    assert done.exit_code == 0, done.output  # the hint holds: 32 readable held-out images remain
