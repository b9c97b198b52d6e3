"""vanilladeploy/evaluate.py through ``vanilladeploy eval``: on a generated labelled folder, the training
checkpoint, the fp32 ONNX and the deploy .pth agree 100% top-1 (exactness carries over to real preprocessing);
labelled accuracy equals a hand computation; a broken file is counted as skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import official_checkpoint, random_model
from exporters.runners import OnnxRuntimeRunner
from vanilladeploy.cli import app
from vanilladeploy.evaluate import evaluate
from vanilladeploy.export import ExportOptions, export_checkpoint
from vanilladeploy.images import Preprocess, load_image, scan_folder

IMG = 64


def make_folder(root: Path, *, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """Gradient-and-noise images of several sizes in class folders."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(60, 160, 2)
            base = np.linspace(0, 255, w)[None, :, None] * rng.random(3)[None, None, :]
            image = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / f"class_{c}" / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    model = random_model("vanillanet_5", num_classes=10, seed=4)
    ckpt = root / "checkpoint-299.pth"
    container = official_checkpoint(model.state_dict(), variant="vanillanet_5")
    container["args"].input_size = IMG
    torch.save(container, ckpt)
    out = root / "export"
    export_checkpoint(str(ckpt), ExportOptions(out_dir=out, img_size=IMG))
    data = make_folder(root / "images")
    return {"ckpt": ckpt, "onnx": out / "vanillanet_5.onnx", "pth": out / "vanillanet_5_deploy.pth", "data": data}


def test_train_form_onnx_and_deploy_agree_exactly(setup: dict[str, Path]) -> None:
    result = evaluate([str(setup["ckpt"]), str(setup["onnx"]), str(setup["pth"])], setup["data"], batch=5)
    info = result.as_dict()
    assert info["images"] == 12 and info["labelled"] and info["skipped"]["count"] == 0
    for row in info["artifacts"]:
        assert row["agreement_top1"] == 100.0, row
        assert row["mean_rel_l2"] <= 1e-5 and row["worst"]["rel_l2"] <= 1e-5
        assert row["images_per_s"] > 0
    assert info["artifacts"][0]["mean_rel_l2"] == 0.0
    assert info["preprocessing"]["sources"]["img_size"] == "ONNX graph input"
    assert info["preprocessing"]["resize"] == f"shorter side to {int(IMG / (224 / 256))}, center crop {IMG}"


def test_labelled_accuracy_equals_a_hand_computation(setup: dict[str, Path]) -> None:
    folder = scan_folder(setup["data"])
    pre = Preprocess(img_size=IMG)
    with OnnxRuntimeRunner(setup["onnx"]) as runner:
        logits = np.concatenate([runner.infer(load_image(p, pre)[None]) for p in folder.files])
    labels = np.asarray(folder.labels)
    top1 = 100.0 * float((logits.argmax(1) == labels).mean())
    top5 = 100.0 * float((np.argsort(-logits, 1)[:, :5] == labels[:, None]).any(1).mean())
    row = evaluate([str(setup["onnx"])], setup["data"], batch=4).as_dict()["artifacts"][0]
    assert row["top1"] == pytest.approx(top1, abs=1e-3) and row["top5"] == pytest.approx(top5, abs=1e-3)


def test_broken_and_foreign_files_are_skipped_and_counted(setup: dict[str, Path], tmp_path: Path) -> None:
    data = make_folder(tmp_path / "images", classes=2, per_class=2, seed=3)
    (data / "class_0" / "truncated.jpg").write_bytes((data / "class_0" / "0.jpg").read_bytes()[:200])
    (data / "class_1" / "README.txt").write_text("not an image")
    info = evaluate([str(setup["onnx"])], data).as_dict()
    assert info["images"] == 4 and info["skipped"]["count"] == 2
    assert any("truncated.jpg" in e for e in info["skipped"]["examples"])


def test_unlabelled_folder_and_limit(setup: dict[str, Path]) -> None:
    info = evaluate([str(setup["onnx"]), str(setup["pth"])], setup["data"] / "class_1", limit=3).as_dict()
    assert info["images"] == 3 and not info["labelled"]
    assert info["artifacts"][1]["top1"] is None and info["artifacts"][1]["agreement_top1"] == 100.0


def test_cli_table_and_json(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", str(setup["onnx"]), str(setup["pth"]), "--data", str(setup["data"]),
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "agree" in result.output and "vanillanet_5_deploy.pth" in result.output
    assert json.loads(out.read_text())["artifacts"][1]["agreement_top1"] == 100.0


def test_cli_refuses_a_missing_folder(setup: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", str(setup["onnx"]), "--data", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "--data" in result.output and len(result.output.strip().splitlines()) == 1
