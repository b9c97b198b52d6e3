"""vanilladeploy.detector and the CLI on detection checkpoints: recognition, where each value came from, refusals
(one line, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from detection_fixtures import COCO_CLASSES, config_text, save_detector, small_dims
from typer.testing import CliRunner

from vanilladeploy.checkpoint import load_checkpoint
from vanilladeploy.cli import app
from vanilladeploy.detector import MASK_RCNN, OFFICIAL, RETINANET, recognize_detector
from vanilladeploy.errors import ArchitectureError, CheckpointError

runner = CliRunner()


@pytest.fixture(scope="module")
def retinanet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_detector(tmp_path_factory.mktemp("det") / "retinanet_vanillanet_13.pth")


def _cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_retinanet_is_recognized_from_its_meta_config(retinanet: Path) -> None:
    spec = recognize_detector(load_checkpoint(retinanet))
    assert spec.kind == RETINANET and spec.classes == COCO_CLASSES and spec.mmdet_version == "2.25.3"
    assert spec.backbone.dims == small_dims() and spec.backbone.act_num == 4
    assert spec.backbone.out_indices == (1, 8, 10) and spec.backbone.feature_strides == (8, 16, 32)
    assert spec.neck.in_channels == spec.backbone.feature_channels and spec.neck.out_channels == 32
    assert spec.head is not None and spec.head.feat_channels == 32 and spec.head.num_anchors == 9
    assert spec.sources["strides"] == "meta['config']" and spec.sources["dims"] == "tensor shapes"


def test_without_meta_the_official_values_are_used_and_said(tmp_path: Path) -> None:
    """A bare state dict with official widths for its neck/head would fall back entirely; here the widths are
    reduced, so the neck's out_channels comes from --det-config."""
    path = save_detector(tmp_path / "bare.pth", meta=False)
    spec = recognize_detector(load_checkpoint(path), config_text="model = dict(neck=dict(out_channels=32), "
                              "bbox_head=dict(feat_channels=32))", config_source="--det-config c.py")
    assert spec.backbone.strides == (1, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1) and spec.sources["strides"] == OFFICIAL
    assert spec.sources["neck.out_channels"] == "--det-config c.py" and spec.classes is None
    with pytest.raises(ArchitectureError, match="bbox_head.retina_cls|shape"):
        recognize_detector(load_checkpoint(path))  # official widths (256) do not fit the /8 neck


def test_mask_rcnn_backbone_and_neck_are_recognized(tmp_path: Path) -> None:
    spec = recognize_detector(load_checkpoint(save_detector(tmp_path / "m.pth", MASK_RCNN)))
    assert spec.kind == MASK_RCNN and spec.head is None
    assert spec.backbone.feature_strides == (4, 8, 16, 32)


@pytest.mark.parametrize("change, message", [
    ({"extra": "model['x'] = 1"}, "Assign statement"),
    ({"extra": "import os"}, "Import statement"),
    ({"extra": "x = open('/etc/passwd')"}, "a call of 'open'"),
    ({"strides": [1, 2, 2, 1, 1, 1, 1, 1, 2, 1]}, "strides"),
    ({"out_indices": [1, 8, 11]}, "out_indices"),
])
def test_hostile_or_unfitting_configs_are_one_line_exit_2(tmp_path: Path, change: dict, message: str) -> None:
    path = save_detector(tmp_path / "bad.pth", **change)
    out = tmp_path / "out"
    result = _cli("export", path, "--out", out)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_a_neck_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    path = save_detector(tmp_path / "d.pth")
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["neck.fpn_convs.1.conv.weight"] = torch.zeros(32, 32, 1, 1)
    torch.save(ckpt, path)
    result = _cli("inspect", path)
    assert result.exit_code == 2 and "neck.fpn_convs.1.conv.weight" in result.output


def test_pickled_code_in_meta_is_never_run(tmp_path: Path) -> None:
    path = save_detector(tmp_path / "d.pth")
    ckpt = torch.load(path, weights_only=True)
    ckpt["meta"]["hook"] = Path("/tmp")  # any non-allow-listed object: unpickling it would call its constructor
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)


def test_an_unknown_backbone_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "swin.pth"
    sd = torch.load(save_detector(tmp_path / "d.pth"), weights_only=True)
    sd["meta"]["config"] = sd["meta"]["config"].replace("type='Vanillanet'", "type='SwinTransformer'")
    torch.save(sd, path)
    result = _cli("inspect", path)
    assert result.exit_code == 2 and "'SwinTransformer' is not a VanillaNet" in result.output


def test_inspect_json_says_where_each_value_came_from(retinanet: Path) -> None:
    result = _cli("inspect", retinanet, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["detector"]["kind"] == RETINANET and info["detector"]["classes"] == 80
    assert info["detector"]["backbone"]["feature_strides"] == [8, 16, 32]
    assert info["sources"]["pipeline.img_scale"] == "meta['config']" and info["source"]["mmdet_version"] == "2.25.3"


def test_det_config_file_is_parsed_not_run(tmp_path: Path, retinanet: Path) -> None:
    cfg = tmp_path / "cfg.py"
    cfg.write_text(config_text(RETINANET, small_dims()) + "\nx = __import__('os').system('touch "
                   f"{tmp_path / 'ran'}')\n")
    result = _cli("inspect", retinanet, "--det-config", cfg)
    assert result.exit_code == 2 and "line" in result.output and not (tmp_path / "ran").exists()


def test_classifier_only_options_are_refused_for_a_detector(retinanet: Path, tmp_path: Path) -> None:
    for extra in (["--static-batch", "2"], ["--input", "uint8"], ["--img-size", "320"], ["--trt-shapes", "1x1/2x2/3x3"],
                  ["--trt", "--precision", "fp16"]):
        result = _cli("export", retinanet, "--out", tmp_path / "o", *extra)
        assert result.exit_code == 2 and extra[0] in result.output, result.output
    result = _cli("export", retinanet, "--out", tmp_path / "o", "--verify-sizes", "801x1344")
    assert result.exit_code == 2 and "multiples of the backbone's total stride 32" in result.output
    result = _cli("export", "vanillanet_5", "--out", tmp_path / "c", "--part", "backbone")
    assert result.exit_code == 2 and "for detection checkpoints" in result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()


def test_mask_rcnn_detector_part_is_a_stated_not_yet(tmp_path: Path) -> None:
    path = save_detector(tmp_path / "m.pth", MASK_RCNN)
    result = _cli("export", path, "--part", "detector", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "RPN and RoI heads" in result.output and not (tmp_path / "o").exists()
