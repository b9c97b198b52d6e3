"""``export --input uint8`` (vanilladeploy/pipeline/pixels.py, reparam.fold_pixel_normalization, the emitter's
PixelInput, the contract's pixel prefix): the graph takes uint8 pixels and computes what the float graph computes on
the same pixels normalized — rel. L2 ≤ 1e-5 for fp32 — for both kinds of stem: without padding (the normalization
folded into the stem, the graph starts Cast → Conv) and zero-padded (the ada variant: the mean subtracted explicitly,
Cast → Sub → Conv). Random weights and randomized BatchNorm statistics throughout; 32-64 px inputs."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_IMG, official_checkpoint, random_model, require
from PIL import Image
from test_evaluate import make_folder
from typer.testing import CliRunner

import vanilladeploy as vd
from vanilladeploy.cli import app
from vanilladeploy.errors import UsageError
from vanilladeploy.evaluate import evaluate
from vanilladeploy.exporters.contract import check_graph_contract
from vanilladeploy.exporters.fp16_graph import convert_to_fp16
from vanilladeploy.exporters.onnx_export import PixelInput, build_onnx, simplify_onnx
from vanilladeploy.exporters.qdq import quantize_qdq
from vanilladeploy.images import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Preprocess
from vanilladeploy.models.vanillanet import VARIANTS, VanillaNet, VariantSpec, randomize_
from vanilladeploy.pipeline.export import ExportOptions, export_checkpoint
from vanilladeploy.pipeline.pixels import graph_weights, stem_pads
from vanilladeploy.reparam import fold_pixel_normalization, reparameterize_state_dict
from vanilladeploy.runtimes.runners import OnnxRuntimeRunner, OpenVinoRunner, TorchRunner
from vanilladeploy.verify import TOLERANCE_FP16, compare

IMG = 64
PADDED = VariantSpec("tiny_padded_stem", (16, 16, 32, 64), (1, 2, 2), ada_pool=(0, 5, 3))
"""Not a variant of the table: the ada variant's structure (a stride-3 stem with padding 1, adaptive pools) at toy
widths, so a padded stem is tested in train form with randomized BN in a second — and the fold decision is shown to
come from the spec, not from a name."""
PIXELS = Preprocess(img_size=SMALL_IMG, input_dtype="uint8")


def _pixels(count: int, batch: int, img: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (batch, 3, img, img), dtype=np.uint8) for _ in range(count)]


def _run(model: onnx.ModelProto | Path, xs: list[np.ndarray]) -> np.ndarray:
    source = model if isinstance(model, Path) else model.SerializeToString()
    with OnnxRuntimeRunner(source) as runner:
        return np.concatenate([runner.infer(x) for x in xs])


# The fold itself, against the unfolded math in float64.
@pytest.mark.parametrize("mean,std", [(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD), ((0.5,) * 3, (0.5,) * 3)])
def test_fold_equals_the_unfolded_math_in_float64(mean: tuple, std: tuple) -> None:
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(8, 3, 4, 4, generator=g) * 0.2, torch.randn(8, generator=g)
    other = torch.randn(5)
    sd = {"stem.0.weight": w, "stem.0.bias": b, "stages.0.conv.weight": other}
    p = torch.randint(0, 256, (2, 3, 16, 16), generator=g).double()
    m, s = (torch.tensor(v, dtype=torch.float64).reshape(1, 3, 1, 1) for v in (mean, std))
    unfolded = F.conv2d((p / 255 - m) / s, w.double(), b.double(), stride=4)
    folded = fold_pixel_normalization(sd, mean, std)
    wf, bf = folded["stem.0.weight"], folded["stem.0.bias"]
    assert wf.dtype == bf.dtype == torch.float32 and wf.is_contiguous() and wf.stride() == (48, 16, 4, 1)
    assert folded["stages.0.conv.weight"] is other and sd["stem.0.weight"] is w  # pure: the input is untouched
    result = compare(F.conv2d(p, wf.double(), bf.double(), stride=4).numpy(), unfolded.numpy())
    assert result.rel_l2 < 1e-7, result  # float32 storage of W', b' only
    # A padded stem: the full fold is wrong at the border, the scale-only fold plus an explicit Sub is exact.
    padded = F.conv2d((p / 255 - m) / s, w.double(), b.double(), stride=3, padding=1)
    wrong = F.conv2d(p, wf.double(), bf.double(), stride=3, padding=1)
    assert compare(wrong.numpy(), padded.numpy()).rel_l2 > 1e-2
    scaled = fold_pixel_normalization(sd, mean, std, fold_mean=False)
    right = F.conv2d(p - 255 * m, scaled["stem.0.weight"].double(), scaled["stem.0.bias"].double(), stride=3,
                     padding=1)
    assert compare(right.numpy(), padded.numpy()).rel_l2 < 1e-7


# The graph, for each kind of stem.
@functools.cache
def _fused(spec: VariantSpec) -> dict[str, torch.Tensor]:
    """The deploy state dict of a train-form model of ``spec`` with random weights and randomized BN."""
    if spec.name in VARIANTS:
        train = random_model(spec.name, seed=7)
    else:
        train = randomize_(VanillaNet(spec.dims, spec.strides, ada_pool=spec.ada_pool, num_classes=10), seed=7)
    return reparameterize_state_dict(train.eval().state_dict()).state_dict


@pytest.mark.parametrize("spec", [VARIANTS["vanillanet_5"], PADDED], ids=["no-padding", "padded"])
def test_uint8_graph_equals_the_float_graph_on_normalized_pixels(spec: VariantSpec) -> None:
    sd = _fused(spec)
    float_graph = simplify_onnx(build_onnx(sd, spec, act_num=3, img_size=SMALL_IMG))
    weights, pixels = graph_weights(sd, spec, PIXELS)
    uint8_graph = simplify_onnx(build_onnx(weights, spec, act_num=3, img_size=SMALL_IMG, pixels=pixels))
    contract = check_graph_contract(uint8_graph, spec, input_dtype="uint8")
    assert contract, contract.problems
    ops = [n.op_type for n in uint8_graph.graph.node]
    assert uint8_graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    if stem_pads(spec):  # the mean cannot be folded into a padded stem: it is subtracted explicitly
        assert ops[:3] == ["Cast", "Sub", "Conv"] and pixels == PixelInput(IMAGENET_DEFAULT_MEAN)
    else:  # folded: nothing between the Cast and the stem conv
        assert ops[:2] == ["Cast", "Conv"] and not {"Sub", "Mul", "Div"} & set(ops)
    assert len(ops) == len(float_graph.graph.node) + (2 if stem_pads(spec) else 1)
    xs = _pixels(3, 2, SMALL_IMG)
    result = compare(_run(uint8_graph, xs), _run(float_graph, [PIXELS.normalize(x) for x in xs]))
    print(f"{spec.name}: uint8 vs float graph in ONNX Runtime, rel L2 {result.rel_l2:.2e}")
    assert result, result  # rel. L2 ≤ 1e-5


def test_the_ada_variant_keeps_its_mean_explicit_and_matches_torch() -> None:
    spec = VARIANTS["vanillanet_13_x1_5_ada_pool"]
    deploy = random_model(spec.name, deploy=True, seed=5)  # train form: float64 merges of 6144² take too long here
    weights, pixels = graph_weights(deploy.state_dict(), spec, PIXELS)
    graph = build_onnx(weights, spec, act_num=3, img_size=SMALL_IMG, pixels=pixels)
    assert [n.op_type for n in graph.graph.node[:3]] == ["Cast", "Sub", "Conv"]
    assert check_graph_contract(graph, spec, input_dtype="uint8")
    xs = _pixels(2, 2, SMALL_IMG, seed=1)
    with TorchRunner(deploy) as runner:
        reference = np.concatenate([runner.infer(PIXELS.normalize(x)) for x in xs])
    result = compare(_run(graph, xs), reference)
    print(f"{spec.name}: uint8 graph vs fused float model, rel L2 {result.rel_l2:.2e}")
    assert result, result


def test_a_padded_stem_refuses_a_full_fold_and_the_contract_checks_the_prefix() -> None:
    sd = random_model("vanillanet_5", deploy=True, seed=2).state_dict()
    with pytest.raises(ValueError, match="pads its input"):
        build_onnx(sd, replace(VARIANTS["vanillanet_5"], ada_pool=(0, 0, 0)), act_num=3, img_size=SMALL_IMG,
                   pixels=PixelInput())
    spec = VARIANTS["vanillanet_5"]
    float_graph = build_onnx(sd, spec, act_num=3, img_size=SMALL_IMG)
    assert any("input is not uint8" in p for p in check_graph_contract(float_graph, spec, input_dtype="uint8").problems)
    explicit = build_onnx(sd, spec, act_num=3, img_size=SMALL_IMG, pixels=PixelInput(IMAGENET_DEFAULT_MEAN))
    problems = check_graph_contract(explicit, spec, input_dtype="uint8").problems
    assert any("through Cast (the normalization is folded" in p for p in problems), problems
    assert not check_graph_contract(explicit, spec)  # a uint8 graph is not a float32 one


@pytest.mark.parametrize("spec", [VARIANTS["vanillanet_5"], PADDED], ids=["no-padding", "padded"])
def test_fp16_and_int8_copies_of_a_uint8_graph(spec: VariantSpec, tmp_path: Path) -> None:
    """fp16 for both kinds; int8 here for the padded kind (vanillanet_5's int8 goes through the pipeline below)."""
    sd = _fused(spec)
    float_graph = build_onnx(sd, spec, act_num=3, img_size=SMALL_IMG)
    weights, pixels = graph_weights(sd, spec, PIXELS)
    uint8_graph = build_onnx(weights, spec, act_num=3, img_size=SMALL_IMG, pixels=pixels)
    xs = _pixels(4, 4, SMALL_IMG, seed=3)
    reference = _run(uint8_graph, xs)
    fp16 = convert_to_fp16(uint8_graph)  # the Cast stays; fp16 from there on
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert compare(_run(fp16, xs), reference, tolerance=TOLERANCE_FP16)
    if not stem_pads(spec):
        return
    paths = {}
    for name, graph, calibration in (("float", float_graph, [PIXELS.normalize(x) for x in xs]),
                                     ("uint8", uint8_graph, xs)):
        onnx.save(graph, tmp_path / f"{name}.onnx")
        result = quantize_qdq(tmp_path / f"{name}.onnx", tmp_path / f"{name}.int8.onnx", calibration)
        assert result and result.quantized_convs == 2 * spec.depth - 1, result.problems
        paths[name] = tmp_path / f"{name}.int8.onnx"
    int8_float = compare(_run(paths["float"], [PIXELS.normalize(x) for x in xs]), reference, tolerance=0.1)
    int8_uint8 = compare(_run(paths["uint8"], xs), reference, tolerance=0.1)
    print(f"{spec.name}: int8 vs fp32 on the same pixels: float input {int8_float.rel_l2:.3g}, "
          f"uint8 input {int8_uint8.rel_l2:.3g}")
    assert int8_float and int8_uint8 and int8_uint8.rel_l2 < 2 * int8_float.rel_l2


# Through the pipeline, the CLI and the API (vanillanet_5, train form with randomized BN).
@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("uint8")
    ckpt = root / "checkpoint-299.pth"
    torch.save(official_checkpoint(random_model("vanillanet_5", seed=1).state_dict(), variant="vanillanet_5"), ckpt)
    export_checkpoint(str(ckpt), ExportOptions(out_dir=root / "float", img_size=IMG))
    result = CliRunner().invoke(app, ["export", str(ckpt), "--img-size", str(IMG), "--input", "uint8", "--out",
                                      str(root / "uint8")])
    assert result.exit_code == 0, result.output
    assert "│ input" in result.output and "uint8" in result.output  # the table's row (wrapped to the terminal)
    return {"root": root, "ckpt": ckpt, "float": root / "float", "uint8": root / "uint8"}


def test_the_export_records_its_input_and_verifies_on_pixels(exports: dict[str, Path]) -> None:
    report = json.loads((exports["uint8"] / "vanillanet_5.report.json").read_text())
    assert report["input"]["dtype"] == "uint8" and report["input"]["normalization"] == "folded into stem/conv"
    assert (report["input"]["bytes_per_image"], report["input"]["float32_bytes_per_image"]) == (3 * IMG**2,
                                                                                                 12 * IMG**2)
    assert report["preprocessing"]["input_dtype"] == "uint8"
    assert report["verification"]["pixels"]["distribution"] == "uniform uint8 pixels 0-255"
    check = report["verification"]["onnxruntime"]
    assert check["passed"] and check["tolerance"] == 1e-5
    model = onnx.load(exports["uint8"] / "vanillanet_5.onnx")
    assert {p.key: p.value for p in model.metadata_props}["input_dtype"] == "uint8"
    assert [n.op_type for n in model.graph.node[:2]] == ["Cast", "Conv"]
    floats = json.loads((exports["float"] / "vanillanet_5.report.json").read_text())
    assert "input" not in floats and "pixels" not in floats["verification"]
    assert "input_dtype" not in floats["preprocessing"]
    assert "input_dtype" not in {p.key for p in onnx.load(exports["float"] / "vanillanet_5.onnx").metadata_props}
    # the deploy .pth stays the float model (the fold lives in the graph only)
    ours = torch.load(exports["uint8"] / "vanillanet_5_deploy.pth")["model"]
    theirs = torch.load(exports["float"] / "vanillanet_5_deploy.pth")["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_the_uint8_export_equals_the_float_export_on_the_same_pixels(exports: dict[str, Path]) -> None:
    xs = _pixels(3, 2, IMG, seed=4)
    pre = Preprocess(img_size=IMG)
    result = compare(_run(exports["uint8"] / "vanillanet_5.onnx", xs),
                     _run(exports["float"] / "vanillanet_5.onnx", [pre.normalize(x) for x in xs]))
    print(f"vanillanet_5 export: uint8 vs float ONNX in ONNX Runtime, rel L2 {result.rel_l2:.2e}")
    assert result, result
    require("openvino", "OpenVINO is not installed (the test extra has it)")
    with OpenVinoRunner(exports["uint8"] / "vanillanet_5.onnx") as runner:  # takes the pixels as they are
        in_openvino = np.concatenate([runner.infer(x) for x in xs])
    assert compare(in_openvino, _run(exports["uint8"] / "vanillanet_5.onnx", xs))


def test_predict_feeds_pixels_to_a_uint8_model(exports: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    with vd.load(exports["uint8"] / "vanillanet_5.onnx") as uint8, vd.load(exports["float"] / "vanillanet_5.onnx") \
            as floats:
        assert uint8.preprocess.input_dtype == "uint8" and floats.preprocess.input_dtype == "float32"
        by_path = uint8.predict(paths)
        result = compare(by_path, floats.predict(paths))
        assert result, result
        pixels = np.stack([uint8.preprocess(Image.open(p)) for p in paths])
        assert pixels.dtype == np.uint8
        np.testing.assert_array_equal(uint8.predict(pixels), by_path)
        assert compare(floats.predict(pixels), by_path)  # uint8 pixels are normalized for a float model
        with pytest.raises(UsageError, match="takes uint8 pixels"):
            uint8.predict(floats.preprocess.normalize(pixels))


def test_eval_runs_float_and_uint8_models_side_by_side(exports: dict[str, Path]) -> None:
    data = make_folder(exports["root"] / "images", classes=2, per_class=3, seed=1)
    rows = evaluate([exports["float"] / "vanillanet_5.onnx", exports["uint8"] / "vanillanet_5.onnx",
                     exports["uint8"] / "vanillanet_5_deploy.pth"], data).rows
    assert [r["agreement_top1"] for r in rows] == [100.0] * 3
    assert all(r["mean_rel_l2"] < 1e-5 for r in rows), rows


def test_the_repository_config_takes_uint8(exports: dict[str, Path], tmp_path: Path) -> None:
    require("tritonclient.grpc", "the serve extra (tritonclient) is not installed")
    from tritonclient.grpc import model_config_pb2 as mc

    from vanilladeploy.triton import python_model
    from vanilladeploy.triton.config import RepoOptions, parse_config
    from vanilladeploy.triton.repository import write_repository

    for backend in ("onnxruntime", "python"):
        result = write_repository(exports["uint8"], tmp_path / backend, RepoOptions(backend=backend))
        cfg = parse_config((result.model_dir / "config.pbtxt").read_text())
        assert (cfg.input[0].data_type, cfg.output[0].data_type) == (mc.TYPE_UINT8, mc.TYPE_FP32)
        assert list(cfg.input[0].dims) == [3, IMG, IMG]
    shape = (-1, 3, IMG, IMG)
    assert python_model.shape_problem("input", np.zeros((1, 3, IMG, IMG), np.uint8), shape, np.uint8) is None
    assert "must be UINT8" in python_model.shape_problem("input", np.zeros((1, 3, IMG, IMG), np.float32), shape,
                                                         np.uint8)


def test_int8_with_pixels_agrees_with_int8_on_floats(exports: dict[str, Path]) -> None:
    images = make_folder(exports["root"] / "calib", classes=4, per_class=10, seed=5)  # 8 calibrate, 32 held out
    gate = {"precision": "int8", "calib": images, "calib_count": 8, "min_agreement": 50.0, "max_rel_l2": 0.1,
            "fallback": "none", "img_size": IMG}
    results = {dtype: vd.export("vanillanet_5", out_dir=exports["root"] / f"int8-{dtype}", input_dtype=dtype, **gate)
               for dtype in ("float32", "uint8")}
    for dtype, result in results.items():
        record = result.report["int8"]["verification"]
        print(f"int8 {dtype} input vs its fp32 ONNX: top-1 {record['agreement_top1']}%, mean rel L2 "
              f"{record['mean_rel_l2']:.3g}")
        assert result and record["passed"], record
    int8_uint8 = results["uint8"].out_dir / "vanillanet_5.int8.onnx"
    assert onnx.load(int8_uint8).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    rows = evaluate([results["float32"].out_dir / "vanillanet_5.int8.onnx", int8_uint8], images).rows
    print(f"int8 uint8 vs int8 float32 on all 40 images: top-1 {rows[1]['agreement_top1']}%, mean rel L2 "
          f"{rows[1]['mean_rel_l2']:.3g}")
    assert rows[1]["mean_rel_l2"] <= gate["max_rel_l2"]


def test_refused_combinations_exit_2(exports: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    trt = runner.invoke(app, ["export", str(exports["ckpt"]), "--input", "uint8", "--trt", "--out", str(tmp_path)])
    assert trt.exit_code == 2 and "--input uint8 with --trt" in trt.output, trt.output
    assert runner.invoke(app, ["export", str(exports["ckpt"]), "--input", "int8"]).exit_code == 2
    with pytest.raises(UsageError, match="--input float16"):
        vd.export(exports["ckpt"], out_dir=tmp_path / "x", input_dtype="float16")
    assert not (tmp_path / "x").exists()
