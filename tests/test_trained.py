"""INT8 proven on a trained VanillaNet (slow): the real CLI on VanillaNet-5 (official widths) trained on MNIST.

The network comes from :mod:`trained` (cached; the first run trains it for a few minutes). A trained network's
logits are well separated, so here — unlike on random weights — int8 has to keep the classifications: the export
must pass at the default ``--min-agreement`` (99 %) and ``eval`` must find int8 within a point of fp32 on 1,000
held-out digits. Accuracy is also recomputed by code written here (own preprocessing, plain torch), so that a bug
shared by ``eval`` and the exporter cannot hide.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from trained import CLASSES, DECAY_EPOCHS, MIN_ACCURACY, VARIANT, Trained, trained_network
from typer.testing import CliRunner, Result

from vanilladeploy.cli import app
from vanilladeploy.models.vanillanet import create_vanillanet

pytestmark = pytest.mark.slow

runner = CliRunner()


def run(*args: object) -> Result:
    """The real CLI, in process."""
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def trained() -> Trained:
    """VanillaNet-5 trained to ≥ ``MIN_ACCURACY`` % on held-out MNIST digits (from the cache after the first run)."""
    return trained_network()


def read_report(out: Path) -> dict[str, Any]:
    """The export's ``<variant>.report.json``: what the export claims, read as a user would."""
    return json.loads((out / f"{VARIANT}.report.json").read_text())


@pytest.fixture(scope="module")
def fp32_out(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``vanilladeploy export CKPT --out OUT``: the fp32 export, exit 0 required."""
    out = tmp_path_factory.mktemp("fp32") / "out"
    result = run("export", trained.checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def int8_out(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``export --precision int8 --calib IMAGES`` at the default --calib-count, method and --min-agreement."""
    out = tmp_path_factory.mktemp("int8") / "out"
    result = run("export", trained.checkpoint, "--out", out, "--precision", "int8", "--calib", trained.images)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def evaluation(trained: Trained, int8_out: Path) -> dict[str, Any]:
    """``vanilladeploy eval CKPT fp32.onnx int8.onnx --data IMAGES --json``: stdout holds the JSON only."""
    result = run("eval", trained.checkpoint, int8_out / f"{VARIANT}.onnx", int8_out / f"{VARIANT}.int8.onnx",
                 "--data", trained.images, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def independent_top1(checkpoint: Path, images: Path) -> float:
    """Top-1 % of the checkpoint over the PNG tree, by code that shares nothing with vanilladeploy's: the
    training-form model with λ = 1, images read here (x/255, ImageNet mean/std, NCHW), labels = folder names."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    model = create_vanillanet(VARIANT, num_classes=CLASSES)
    model.load_state_dict(state)
    model.set_lambda(1.0)
    model.eval()
    files = sorted(images.glob("*/*.png"))
    labels = torch.tensor([int(f.parent.name) for f in files])
    x = torch.from_numpy(np.stack([_preprocess(f) for f in files]))
    with torch.no_grad():
        predicted = torch.cat([model(xb).argmax(1) for xb in x.split(250)])
    return 100.0 * int((predicted == labels).sum()) / len(files)


def _preprocess(file: Path) -> np.ndarray:
    """32×32 RGB PNG → (3, 32, 32) float32, ToTensor then Normalize(ImageNet mean, std)."""
    with Image.open(file) as image:
        assert image.mode == "RGB" and image.size == (32, 32), (file, image.mode, image.size)
        x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1))


def test_trained_network_classifies_held_out_digits(trained: Trained) -> None:
    """Training asserted it already; re-asserted here from what the (possibly cached) run recorded."""
    print(f"\n[trained] {trained.checkpoint}: {trained.epochs} epochs (E = {trained.decay_epochs}), "
          f"{trained.train_seconds:.0f} s of training, held-out top-1 {trained.accuracy:.2f}%")
    assert trained.accuracy >= MIN_ACCURACY
    assert len(list(trained.images.glob("*/*.png"))) == 1000


def test_inspect_reads_an_exact_lambda(trained: Trained) -> None:
    """The checkpoint reads as the official trainer's after its last epoch: λ = 1 exactly, not assumed."""
    result = run("inspect", trained.checkpoint, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["architecture"]["variant"] == VARIANT and info["architecture"]["num_classes"] == CLASSES
    lam = info["lambda"]
    assert lam["value"] == 1.0 and lam["exact"] and not lam["assumed"], lam
    assert lam["epoch"] == lam["decay_epochs"] == DECAY_EPOCHS, lam


def test_fp32_export_is_verified(fp32_out: Path) -> None:
    """Trained weights (real BatchNorm statistics, not random ones) fuse exactly: torch and ONNX Runtime pass."""
    report = read_report(fp32_out)
    assert report["lambda"]["exact"] and report["lambda"]["value"] == 1.0
    torch_check, ort_check = report["verification"]["torch"], report["verification"]["onnxruntime"]
    print(f"\n[fp32] rel L2 torch {torch_check['rel_l2']:.2e}, onnxruntime {ort_check['rel_l2']:.2e}")
    assert torch_check["passed"] is True and ort_check["passed"] is True
    assert (fp32_out / f"{VARIANT}.onnx").is_file()


def test_int8_export_passes_the_default_agreement(int8_out: Path, trained: Trained) -> None:
    """On a network that separates classes, minmax int8 keeps ≥ 99 % of the fp32 decisions on held-out digits."""
    int8 = read_report(int8_out)["int8"]
    check = int8["verification"]
    print(f"\n[int8] held-out {int8['holdout']['images']} images: agreement {check['agreement_top1']}%, "
          f"mean rel L2 {check['mean_rel_l2']:.4f}, worst {check['worst']['rel_l2']:.4f}")
    assert int8["verified"] is True and check["passed"] is True
    assert check["min_agreement"] == 99.0 and check["agreement_top1"] >= 99.0
    assert check["mean_rel_l2"] < 0.1
    assert check["worst"]["rel_l2"] >= check["mean_rel_l2"] and Path(check["worst"]["path"]).is_file()
    calibration = int8["calibration"]
    assert calibration["method"] == "minmax" and calibration["split_seed"] == 0
    assert calibration["images"] == 256 and calibration["skipped"] == 0
    assert int8["holdout"]["images"] == 256 and int8["holdout"]["skipped"] == 0
    assert calibration["folder"] == str(trained.images)


def test_eval_agrees_with_an_independent_computation(evaluation: dict[str, Any], trained: Trained) -> None:
    """fp32 ONNX = checkpoint (same network); int8 within a point; the checkpoint's top-1 = our own count."""
    checkpoint, fp32, int8 = evaluation["artifacts"]
    assert evaluation["images"] == 1000 and evaluation["labelled"] and evaluation["skipped"]["count"] == 0
    assert checkpoint["kind"].startswith("torch train")
    assert (fp32["kind"], int8["kind"]) == ("onnx fp32", "onnx int8")
    ours = independent_top1(trained.checkpoint, trained.images)
    print(f"\n[eval] top-1: checkpoint {checkpoint['top1']}%, fp32 ONNX {fp32['top1']}%, int8 {int8['top1']}% "
          f"(agreement with the checkpoint {int8['agreement_top1']}%, mean rel L2 {int8['mean_rel_l2']:.4f}); "
          f"independent {ours:.2f}%, at training {trained.accuracy:.2f}%")
    assert fp32["top1"] == checkpoint["top1"]
    assert abs(int8["top1"] - fp32["top1"]) <= 1.0
    assert abs(ours - checkpoint["top1"]) <= 0.01
    assert abs(ours - trained.accuracy) <= 0.1  # the PNGs are the digits training held out (one image of slack)


# --- accuracy-aware int8 on the trained network -----------------------------------------------------------------

def _full_int8_rel_l2(int8_out: Path) -> float:
    """The held-out mean rel. L2 of the fully quantized network, as this CPU's int8 kernels compute it (0.078 on an
    AVX2-only EPYC, lower with VNNI)."""
    int8 = read_report(int8_out)["int8"]
    steps = int8["fallback"]["steps"]
    if steps:  # the search's first step is the full int8 model
        return steps[0]["mean_rel_l2"]
    assert int8["float_layers"] == [], int8["float_layers"]
    return int8["verification"]["mean_rel_l2"]


@pytest.fixture(scope="module")
def fallback_out(trained: Trained, int8_out: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[Path, Result, float]:
    """``--max-rel-l2`` at 0.9 × the full int8 model's error measured HERE: the gate is missed on every CPU, so
    ``--fallback auto`` has to keep Convs in float until the mean relative L2 is under it (all 9 in float would)."""
    gate = round(0.9 * _full_int8_rel_l2(int8_out), 5)
    out = tmp_path_factory.mktemp("fallback") / "out"
    result = run("export", trained.checkpoint, "--out", out, "--precision", "int8", "--calib", trained.images,
                 "--max-rel-l2", gate, "--max-fallback", 9)
    return out, result, gate


def _float_convs(path: Path) -> set[str]:
    import onnx

    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits
            and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT}


@pytest.mark.slow
def test_fallback_auto_keeps_the_most_sensitive_convs_until_the_gate_is_met(
        fallback_out: tuple[Path, Result, float]) -> None:
    out, result, gate = fallback_out
    assert result.exit_code == 0, result.output
    int8 = read_report(out)["int8"]
    steps = int8["fallback"]["steps"]
    assert steps, f"premise: the full int8 model should miss --max-rel-l2 {gate} ({int8['verification']})"
    assert steps[0]["float_layers"] == [] and steps[0]["mean_rel_l2"] > gate  # the full int8 model missed
    assert len(steps) >= 2 and steps[-1]["mean_rel_l2"] <= gate and int8["verified"]
    errors = [s["mean_rel_l2"] for s in steps]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors  # every fallback step improves the gate's figure
    table = int8["sensitivity"]
    assert len(table) == 9 and {s["kind"] for s in table} == {"dense", "depthwise"}
    assert [s["layer"] for s in table[:len(steps) - 1]] == steps[-1]["float_layers"]  # in sensitivity order
    assert set(int8["float_layers"]) == _float_convs(out / f"{VARIANT}.int8.onnx")  # exactly the Convs without QDQ
    cost = int8["latency_ms"]
    assert all(cost[f"{k}_median_ms"] > 0 for k in ("fp32", "int8", "mixed"))
    print(f"\nfallback: {len(steps) - 1} float Convs {int8['float_layers']}, rel L2 {errors}; most sensitive: "
          + ", ".join(f"{s['layer']} {s['agreement_top1']}% {s['mean_rel_l2']:.4f}" for s in table[:5])
          + f"; ORT batch {cost['batch']} ms fp32/int8/mixed {cost['fp32_median_ms']}/{cost['int8_median_ms']}/"
          f"{cost['mixed_median_ms']}")


@pytest.mark.slow
def test_explicit_fallback_layers_on_the_trained_network(trained: Trained, tmp_path: Path) -> None:
    result = run("export", trained.checkpoint, "--out", tmp_path / "o", "--precision", "int8", "--calib",
                 trained.images, "--fallback", "stem/conv,stages.2/act")
    assert result.exit_code == 0, result.output
    assert _float_convs(tmp_path / "o" / f"{VARIANT}.int8.onnx") == {"stem/conv", "stages.2/act"}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_calibration_methods_end_to_end_differ_from_minmax(method: str, trained: Trained, int8_out: Path,
                                                            tmp_path: Path) -> None:
    import onnx

    from vanilladeploy.exporters.qdq import quantization_scales

    result = run("export", trained.checkpoint, "--out", tmp_path / "o", "--precision", "int8", "--calib",
                 trained.images, "--calib-method", method)
    assert result.exit_code == 0, result.output
    assert read_report(tmp_path / "o")["int8"]["calibration"]["method"] == method
    minmax = quantization_scales(onnx.load(int8_out / f"{VARIANT}.int8.onnx"))
    other = quantization_scales(onnx.load(tmp_path / "o" / f"{VARIANT}.int8.onnx"))
    assert any(not np.array_equal(minmax[k], other[k]) for k in minmax)


@pytest.mark.slow
def test_openvino_int8_and_bf16_pass_their_gates_on_the_trained_network(trained: Trained, int8_out: Path) -> None:
    """OpenVINO runs the same int8 QDQ file: it must pass the same gate against fp32 on the same digits; bf16
    (OpenVINO's precision) rel. L2 ≤ 1e-2 and the agreement gate, where this CPU computes bf16."""
    import vanilladeploy as vd
    from vanilladeploy.runtimes.runners import OpenVinoRunner, bf16_missing

    images = sorted(trained.images.glob("*/*.png"))[::4]  # 250 digits, every class
    with vd.load(int8_out / f"{VARIANT}.onnx") as fp32:
        reference = fp32.predict(images)
    x = np.stack([fp32.preprocess(Image.open(f)) for f in images])
    runs = {"int8": (f"{VARIANT}.int8.onnx", "fp32")}
    if not bf16_missing():
        runs["bf16"] = (f"{VARIANT}.onnx", "bf16")
    for name, (file, precision) in runs.items():
        with OpenVinoRunner(int8_out / file, precision=precision) as runner:
            logits = runner.infer(x)
        agreement = 100.0 * float((logits.argmax(1) == reference.argmax(1)).mean())
        rel_l2 = float(np.mean(np.linalg.norm(logits - reference, axis=1) / np.linalg.norm(reference, axis=1)))
        assert agreement >= 99.0, (name, agreement)
        assert rel_l2 <= (1e-2 if name == "bf16" else 0.1), (name, rel_l2)
