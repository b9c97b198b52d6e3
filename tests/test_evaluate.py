"""vanilladeploy/evaluate.py through ``vanilladeploy eval``: on a generated labelled folder, the training
checkpoint, the fp32 ONNX and the deploy .pth agree 100% top-1 (exactness carries over to real preprocessing);
labelled accuracy equals a hand computation; a broken file is counted as skipped, a folder of only broken files is
refused; a fixed-batch ONNX is fed its batch; the preprocessing an export records (taken from the checkpoint's args)
is what eval of the ONNX alone uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import official_checkpoint, random_model
from PIL import Image
from typer.testing import CliRunner

from vanilladeploy.checkpoint import Checkpoint
from vanilladeploy.cli import app
from vanilladeploy.errors import UsageError
from vanilladeploy.evaluate import Artifact, choose_preprocess, evaluate, open_artifact
from vanilladeploy.exporters.onnx_export import set_metadata
from vanilladeploy.images import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    NoReadableImagesError,
    Preprocess,
    load_image,
    scan_folder,
)
from vanilladeploy.pipeline.export import ExportOptions, export_checkpoint, export_preprocess
from vanilladeploy.runtimes.runners import ChunkedRunner, OnnxRuntimeRunner, Runner, TorchRunner

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
    assert set(info["preprocessing"]["sources"].values()) == {"onnx metadata"}  # what the export recorded
    assert info["preprocessing"]["exported_sources"]["img_size"] == "--img-size"
    assert info["preprocessing"]["resize"] == f"shorter side to {int(IMG / (224 / 256))}, center crop {IMG}"


def test_labelled_accuracy_equals_a_hand_computation(setup: dict[str, Path], tmp_path: Path) -> None:
    """Labels chosen from the model's own ranking: a third right, a third second-best (top-5 only), a third last."""
    source = make_folder(tmp_path / "source", classes=1, per_class=12, seed=7) / "class_0"
    pre = Preprocess(img_size=IMG)  # what the ONNX records: --img-size, and the default crop and mean/std
    with OnnxRuntimeRunner(setup["onnx"]) as runner:
        ranked = {p: np.argsort(-runner.infer(load_image(p, pre)[None])[0]) for p in scan_folder(source).files}
    labelled = tmp_path / "labelled"
    for c in range(10):  # every class of the 10-class model, so that folder index = class index
        (labelled / f"class_{c}").mkdir(parents=True)
    for i, (path, ranks) in enumerate(ranked.items()):
        shutil.copy(path, labelled / f"class_{ranks[(0, 1, 9)[i % 3]]}" / path.name)
    folder = scan_folder(labelled)
    labels = np.asarray(folder.labels)
    with OnnxRuntimeRunner(setup["onnx"]) as runner:
        logits = np.concatenate([runner.infer(load_image(p, pre)[None]) for p in folder.files])
    top1 = 100.0 * float((logits.argmax(1) == labels).mean())
    top5 = 100.0 * float((np.argsort(-logits, 1)[:, :5] == labels[:, None]).any(1).mean())
    assert (top1, top5) == pytest.approx((100 / 3, 200 / 3))  # neither trivial nor equal
    row = evaluate([str(setup["onnx"])], labelled, batch=5).as_dict()["artifacts"][0]
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
                                      "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    assert "agree" in result.output and "vanillanet_5_deploy.pth" in result.output
    assert json.loads(out.read_text())["artifacts"][1]["agreement_top1"] == 100.0


def test_cli_json_prints_and_the_old_spelling_still_writes(setup: dict[str, Path], tmp_path: Path) -> None:
    args = ["eval", str(setup["onnx"]), str(setup["pth"]), "--data", str(setup["data"])]
    printed = CliRunner().invoke(app, [*args, "--json"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout)["artifacts"][1]["agreement_top1"] == 100.0  # stdout is JSON only
    old = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "old.json")])
    assert old.exit_code == 0 and "deprecated: --json PATH is now --json-out PATH" in old.stderr, old.output
    assert json.loads((tmp_path / "old.json").read_text())["artifacts"][1]["agreement_top1"] == 100.0


def test_cli_refuses_a_missing_folder(setup: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", str(setup["onnx"]), "--data", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "--data" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_folder_of_only_unreadable_images_is_refused_before_any_inference(
        setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "broken"
    (data / "cls").mkdir(parents=True)
    for i in range(3):
        (data / "cls" / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "cls" / "notes.txt").write_text("not an image")
    result = CliRunner().invoke(app, ["eval", str(setup["onnx"]), "--data", str(data)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and f"no readable images in {data} (4 skipped" in result.output

    def no_session(self: OnnxRuntimeRunner) -> None:
        raise AssertionError("a session was started although no image is readable")

    monkeypatch.setattr(OnnxRuntimeRunner, "activate_impl", no_session)
    with pytest.raises(NoReadableImagesError, match="4 skipped"):
        evaluate([str(setup["onnx"])], data)


class _FixedBatch(Runner):
    """Accepts only batches of ``n`` (as a fixed-batch graph does); records what it was fed."""

    def __init__(self, n: int | None) -> None:
        self.n, self.seen = n, []

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        assert self.n is None or len(x) == self.n, f"fed {len(x)}, accepts {self.n}"
        self.seen.append(len(x))
        return x.reshape(len(x), -1).sum(1, keepdims=True)


@pytest.mark.parametrize(("images", "low", "high", "fed"), [(7, 3, 3, [3, 3, 3]), (7, 1, 4, [4, 3]),
                                                        (5, 2, 4, [4, 2])])
def test_chunked_runner_splits_pads_and_drops_the_padding(images: int, low: int, high: int, fed: list[int]) -> None:
    inner = _FixedBatch(3 if low == high else None)
    x = np.random.default_rng(0).standard_normal((images, 3, 2, 2), dtype=np.float32)
    with ChunkedRunner(inner, min_batch=low, max_batch=high) as runner:
        y = runner.infer(x)
    assert inner.seen == fed
    np.testing.assert_array_equal(y, x.reshape(len(x), -1).sum(1, keepdims=True))


def test_a_fixed_batch_onnx_is_fed_its_batch(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "static"
    export_checkpoint(str(setup["ckpt"]), ExportOptions(out_dir=out, img_size=IMG, static_batch=2))
    static = out / "vanillanet_5.onnx"
    assert onnx.load(static).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    info = evaluate([str(setup["onnx"]), str(static)], setup["data"], batch=5).as_dict()  # 5, 5, 2 → 2+2+2(pad)…
    assert info["images"] == 12 and info["artifacts"][1]["agreement_top1"] == 100.0
    assert info["artifacts"][1]["mean_rel_l2"] <= 1e-5
    result = CliRunner().invoke(app, ["eval", str(static), "--data", str(setup["data"])])  # --batch 32 by default
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def with_args(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An export from a checkpoint whose args give input_size 64, crop_pct 0.95 and Inception's mean/std; no
    --img-size given."""
    root = tmp_path_factory.mktemp("args")
    container = official_checkpoint(random_model("vanillanet_5", num_classes=10, seed=6).state_dict(),
                                    variant="vanillanet_5")
    container["args"].input_size, container["args"].crop_pct = IMG, 0.95
    container["args"].imagenet_default_mean_and_std = False
    ckpt = root / "checkpoint-299.pth"
    torch.save(container, ckpt)
    out = root / "export"
    assert export_checkpoint(str(ckpt), ExportOptions(out_dir=out, precision="fp16")).error is None
    return {"ckpt": ckpt, "out": out}


ARGS_SOURCES = {"img_size": "checkpoint args.input_size", "crop_pct": "checkpoint args.crop_pct",
                "mean_std": "checkpoint args.imagenet_default_mean_and_std"}


def test_export_takes_the_preprocessing_from_the_checkpoint_args(with_args: dict[str, Path]) -> None:
    pre = json.loads((with_args["out"] / "vanillanet_5.report.json").read_text())["preprocessing"]
    assert (pre["img_size"], pre["crop_pct"], pre["mean"], pre["std"]) == (IMG, 0.95, [0.5] * 3, [0.5] * 3)
    assert pre["sources"] == ARGS_SOURCES
    for name in ("vanillanet_5.onnx", "vanillanet_5.fp16.onnx"):
        model = onnx.load(with_args["out"] / name)
        assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:] == [3, IMG, IMG]
        meta = {p.key: p.value for p in model.metadata_props}
        assert (meta["img_size"], float(meta["crop_pct"])) == (str(IMG), 0.95), name
        assert json.loads(meta["mean"]) == json.loads(meta["std"]) == [0.5] * 3, name
        assert json.loads(meta["preprocessing_sources"]) == ARGS_SOURCES, name


def test_img_size_comes_from_the_option_then_the_args_then_the_default() -> None:
    def source(img_size: int | None, args: dict) -> tuple[int, str]:
        pre = export_preprocess(Checkpoint({}, "x", "train", args=args), ExportOptions(img_size=img_size))
        return pre.img_size, pre.sources["img_size"]

    assert source(48, {"input_size": 96}) == (48, "--img-size")
    assert source(None, {"input_size": 96}) == (96, "checkpoint args.input_size")
    assert source(None, {}) == (224, "default")


def test_eval_of_an_onnx_alone_uses_the_preprocessing_it_records(with_args: dict[str, Path],
                                                                 setup: dict[str, Path]) -> None:
    for name, kind in (("vanillanet_5.onnx", "onnx fp32"), ("vanillanet_5.fp16.onnx", "onnx fp16")):
        info = evaluate([str(with_args["out"] / name)], setup["data"], limit=3).as_dict()
        pre = info["preprocessing"]
        assert (pre["img_size"], pre["crop_pct"], pre["mean"], pre["std"]) == (IMG, 0.95, [0.5] * 3, [0.5] * 3)
        assert pre["sources"] == dict.fromkeys(ARGS_SOURCES, "onnx metadata")
        assert pre["exported_sources"] == ARGS_SOURCES
        assert info["artifacts"][0]["kind"] == kind
    both = evaluate([str(with_args["ckpt"]), str(with_args["out"] / "vanillanet_5.onnx"),
                     str(with_args["out"] / "vanillanet_5_deploy.pth")], setup["data"], limit=4).as_dict()
    assert all(row["agreement_top1"] == 100.0 and row["mean_rel_l2"] <= 1e-5 for row in both["artifacts"])
    alone = evaluate([str(with_args["out"] / "vanillanet_5_deploy.pth")], setup["data"], limit=1).as_dict()
    assert alone["preprocessing"]["sources"] == dict.fromkeys(ARGS_SOURCES, "default")  # a deploy .pth records none


def test_precision_is_read_from_the_graph_without_metadata(with_args: dict[str, Path], tmp_path: Path) -> None:
    for name, kind in (("vanillanet_5.fp16.onnx", "onnx fp16"), ("vanillanet_5.onnx", "onnx fp32")):
        model = onnx.load(with_args["out"] / name)
        set_metadata(model, {})
        onnx.save(model, tmp_path / name)
        artifact = open_artifact(str(tmp_path / name))
        assert artifact.kind == kind and artifact.recorded is None and artifact.img_size == IMG


def test_choose_preprocess_labels_where_each_value_came_from() -> None:
    dummy = TorchRunner(torch.nn.Identity())
    ckpt = Artifact("ckpt.pth", "torch train", dummy, None, {"input_size": 224, "crop_pct": 0.9})
    engine = Artifact("m.engine", "tensorrt engine", dummy, 96, size_source="engine profile")
    pre = choose_preprocess([ckpt, engine])
    assert (pre.img_size, pre.crop_pct) == (96, 0.9)
    assert dict(pre.sources) == {"img_size": "engine profile", "crop_pct": "checkpoint args.crop_pct",
                                 "mean_std": "default"}
    recorded = Preprocess.from_metadata(Preprocess(img_size=96, crop_pct=0.95).metadata())
    onnx_file = Artifact("m.onnx", "onnx fp32", dummy, 96, recorded=recorded)
    pre = choose_preprocess([ckpt, onnx_file, engine])
    assert (pre.img_size, pre.crop_pct) == (96, 0.95) and set(pre.sources.values()) == {"onnx metadata"}
    other = Artifact("n.onnx", "onnx fp32", dummy, 96,
                     recorded=Preprocess.from_metadata(Preprocess(img_size=96, crop_pct=0.9).metadata()))
    with pytest.raises(UsageError, match="different preprocessing"):
        choose_preprocess([onnx_file, other])


def _channel_mean_model(path: Path, *, swap01: bool) -> None:
    """An ONNX whose logits are the 3 channel means of its (preprocessed) input — classes 0 and 1 swapped when
    ``swap01``: its top-1 disagrees with the unswapped model exactly on the images whose top-1 is class 0 or 1."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat" if swap01 else "logits"])]
    if swap01:
        index = helper.make_tensor("order", TensorProto.INT64, [3], [1, 0, 2])
        nodes.append(helper.make_node("Gather", ["flat", "order"], ["logits"], axis=1))
    graph = helper.make_graph(nodes, "means", [x], [y], [index] if swap01 else [])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_agreement_and_rel_l2_equal_a_hand_computation(tmp_path: Path) -> None:
    """Two artifacts that disagree on exactly k = 3 of n = 10 images: eval's agreement is 70 % and its mean rel. L2
    is the mean of √2·|a0 − a1| / ‖a‖ over the images, computed here by hand from the normalized channel means."""
    data = tmp_path / "images"
    data.mkdir()
    colours = [(200, 30, 40), (30, 210, 50), (180, 60, 20)] + [(20, 40, 230 - 5 * i) for i in range(7)]
    for i, rgb in enumerate(colours):
        Image.fromarray(np.full((32, 32, 3), rgb, np.uint8)).save(data / f"{i:02d}.png")
    _channel_mean_model(tmp_path / "a.onnx", swap01=False)
    _channel_mean_model(tmp_path / "b.onnx", swap01=True)
    info = evaluate([str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx")], data).as_dict()
    mean, std = np.array(IMAGENET_DEFAULT_MEAN), np.array(IMAGENET_DEFAULT_STD)
    a = (np.array(colours, dtype=np.float64) / 255 - mean) / std  # what the model outputs: the normalized means
    disagree = np.isin(a.argmax(1), [0, 1])
    assert disagree.sum() == 3  # by construction: three red/green-dominant images, seven blue-dominant
    rel = np.sqrt(2) * np.abs(a[:, 0] - a[:, 1]) / np.linalg.norm(a, axis=1)
    row = info["artifacts"][1]
    assert info["images"] == 10 and row["agreement_top1"] == 70.0
    assert row["mean_rel_l2"] == pytest.approx(rel.mean(), rel=1e-5)
    assert row["worst"]["rel_l2"] == pytest.approx(rel.max(), rel=1e-5)
    assert Path(row["worst"]["path"]).name == f"{int(rel.argmax()):02d}.png"
