"""The exported detector against the references the issue names: the official backbone's structure (re-stated
below from torch primitives with the official key names, loaded strictly), and mmdetection's own FPN, RetinaHead
and ``predict_by_feat`` (anchors, decoding, score filter, batched NMS). Widths are VanillaNet-13's divided by 8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from conftest import require
from detection_fixtures import MASK_RCNN, RETINANET, save_detector
from torch import nn

from vanilladeploy.checkpoint import load_checkpoint
from vanilladeploy.detector import recognize_detector
from vanilladeploy.exporters.detector_graph import emit_detector
from vanilladeploy.models.detection import RetinaSpec, VanillaNetBackbone, sub_state_dict
from vanilladeploy.models.retina_post import retina_detections
from vanilladeploy.pipeline.det_checks import pair_detections
from vanilladeploy.pipeline.detection import DetectionExportOptions, export_detector
from vanilladeploy.reparam import reparameterize_backbone
from vanilladeploy.runtimes.runners import ort_session

SIZES = ((800, 1344), (320, 480))


class OfficialStructure(nn.Module):
    """The official detection backbone's forward (stem1 → stem2 → per stage conv1 → conv2 → pool → ReLU, depthwise
    conv, BN) in torch primitives, with its parameter names; BN eps 1e-6 everywhere."""

    def __init__(self, dims, strides, out_indices, act_num: int) -> None:
        super().__init__()
        bn = lambda c: nn.BatchNorm2d(c, eps=1e-6)  # noqa: E731
        act = lambda c: nn.ParameterDict({"weight": nn.Parameter(torch.empty(c, 1, 2 * act_num + 1,  # noqa: E731
                                                                               2 * act_num + 1))})
        self.act_num, self.strides, self.out_indices = act_num, strides, out_indices
        self.stem1 = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), bn(dims[0]))
        self.stem2 = nn.Sequential(nn.Conv2d(dims[0], dims[0], 1), bn(dims[0]), nn.Module())
        self.stem2[2].weight, self.stem2[2].bn = act(dims[0])["weight"], bn(dims[0])
        self.stages = nn.ModuleList()
        for i in range(len(strides)):
            stage = nn.Module()
            stage.conv1 = nn.Sequential(nn.Conv2d(dims[i], dims[i], 1), bn(dims[i]))
            stage.conv2 = nn.Sequential(nn.Conv2d(dims[i], dims[i + 1], 1), bn(dims[i + 1]))
            stage.act = nn.Module()
            stage.act.weight, stage.act.bn = act(dims[i + 1])["weight"], bn(dims[i + 1])
            self.stages.append(stage)

    def _act(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module.bn(F.conv2d(F.relu(x), module.weight, padding=self.act_num, groups=x.shape[1]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem2[1](self.stem2[0](self.stem1(x)))
        x = self._act(self.stem2[2], x)
        outs = []
        for i, (stage, s) in enumerate(zip(self.stages, self.strides)):
            x = stage.conv2(stage.conv1(x))
            x = F.max_pool2d(x, s) if s > 1 else x
            x = self._act(stage.act, x)
            if i in self.out_indices:
                outs.append(x)
        return outs


@pytest.fixture(scope="module")
def mmdet() -> None:
    require("mmengine", "mmdetection is the reference for the detector (pip install mmdet==3.3.0 mmcv-lite==2.1.0 "
            "mmengine==0.10.7)")
    import mmdet_reference

    mmdet_reference.install()
    require("mmdet.models.dense_heads", "mmdetection's RetinaHead")


def _inputs(seed: int = 0) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1 if i == 0 else 2, 3, h, w, generator=g).numpy() for i, (h, w) in enumerate(SIZES)]


def _official(ckpt, spec) -> OfficialStructure:
    b = spec.backbone
    model = OfficialStructure(b.dims, b.strides, b.out_indices, b.act_num)
    model.load_state_dict(sub_state_dict(ckpt.state_dict, "backbone"), strict=True)
    return model.eval()


def _mmdet_neck_and_head(ckpt, spec):
    from mmdet.models.dense_heads import RetinaHead
    from mmdet.models.necks import FPN
    from mmengine.config import ConfigDict

    n = spec.neck
    fpn = FPN(in_channels=list(n.in_channels), out_channels=n.out_channels, num_outs=n.num_outs,
              start_level=n.start_level, add_extra_convs=n.add_extra_convs).eval()
    fpn.load_state_dict(sub_state_dict(ckpt.state_dict, "neck"), strict=True)
    if spec.head is None:
        return fpn, None
    h = spec.head
    head = RetinaHead(num_classes=h.num_classes, in_channels=n.out_channels, stacked_convs=h.stacked_convs,
                      feat_channels=h.feat_channels,
                      anchor_generator=dict(type="AnchorGenerator", octave_base_scale=h.octave_base_scale,
                                            scales_per_octave=h.scales_per_octave, ratios=list(h.ratios),
                                            strides=list(h.anchor_strides)),
                      bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=list(h.target_means),
                                      target_stds=list(h.target_stds)),
                      test_cfg=ConfigDict(nms_pre=h.nms_pre, min_bbox_size=h.min_bbox_size, score_thr=h.score_thr,
                                          nms=dict(type="nms", iou_threshold=h.iou_threshold),
                                          max_per_img=h.max_per_img)).eval()
    head.load_state_dict(sub_state_dict(ckpt.state_dict, "bbox_head"), strict=True)
    return fpn, head


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


@pytest.fixture(scope="module")
def retinanet(tmp_path_factory: pytest.TempPathFactory):
    path = save_detector(tmp_path_factory.mktemp("det") / "retinanet.pth")
    ckpt = load_checkpoint(path)
    return ckpt, recognize_detector(ckpt)


def test_backbone_onnx_equals_the_official_structure(retinanet, tmp_path: Path) -> None:
    ckpt, spec = retinanet
    result = export_detector(ckpt, DetectionExportOptions(out_dir=tmp_path / "b", part="backbone", sizes=SIZES))
    model = onnx.load(result.onnx)
    assert [o.name for o in model.graph.output] == ["c3", "c4", "c5"]
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims == [["batch", 3, "height", "width"]]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 2 * 12 and "BatchNormalization" not in ops
    session, official = ort_session(result.onnx), _official(ckpt, spec)
    for x in _inputs(seed=5):
        with torch.no_grad():
            refs = official(torch.from_numpy(x))
        for y, r in zip(session.run(None, {"input": x}), refs):
            assert _rel(y, r.numpy()) <= 1e-5
    certs = result.report["reparameterization"]["certificates"]
    assert len(certs) == 12 and max(c["rel_l2"] for c in certs) < 1e-6


def test_deploy_pth_loads_strictly_into_the_deploy_backbone(retinanet, tmp_path: Path) -> None:
    ckpt, spec = retinanet
    result = export_detector(ckpt, DetectionExportOptions(out_dir=tmp_path / "n", part="neck", sizes=SIZES[1:]))
    saved = torch.load(next(p for n, p in result.artifacts.items() if n.endswith("_deploy.pth")), weights_only=True)
    b = spec.backbone
    deploy = VanillaNetBackbone(b.dims, b.strides, b.out_indices, act_num=b.act_num, deploy=True).eval()
    deploy.load_state_dict(sub_state_dict(saved["state_dict"], "backbone"), strict=True)
    assert sub_state_dict(saved["state_dict"], "neck").keys() == sub_state_dict(ckpt.state_dict, "neck").keys()
    x = torch.from_numpy(_inputs()[1])
    with torch.no_grad():
        for y, r in zip(deploy(x), _official(ckpt, spec)(x)):
            assert _rel(y.numpy(), r.numpy()) <= 1e-5
    assert saved["meta"]["config"] == ckpt.meta["config"]


def test_neck_onnx_equals_mmdetection_fpn(mmdet, retinanet, tmp_path: Path) -> None:
    ckpt, spec = retinanet
    result = export_detector(ckpt, DetectionExportOptions(out_dir=tmp_path / "n", part="neck", sizes=SIZES))
    fpn, _ = _mmdet_neck_and_head(ckpt, spec)
    session, official = ort_session(result.onnx), _official(ckpt, spec)
    assert [o.name for o in session.get_outputs()] == ["p3", "p4", "p5", "p6", "p7"]
    for x in _inputs(seed=1):
        with torch.no_grad():
            refs = fpn(official(torch.from_numpy(x)))
        for y, r in zip(session.run(None, {"input": x}), refs):
            assert y.shape == tuple(r.shape) and _rel(y, r.numpy()) <= 1e-5


def test_detector_boxes_equal_mmdetection_predict_by_feat(mmdet, retinanet, tmp_path: Path) -> None:
    """Raw head outputs ≤ 1e-5 rel. L2 against mmdet's RetinaHead; after NMS the same boxes, labels and scores
    (≤ 1e-5) as mmdet's predict_by_feat, at 800×1344 (batch 1) and 320×480 (batch 2)."""
    ckpt, spec = retinanet
    export_detector(ckpt, DetectionExportOptions(out_dir=tmp_path / "d", sizes=SIZES))  # verified as it exports
    fused = reparameterize_backbone(sub_state_dict(ckpt.state_dict, "backbone")).state_dict
    raw = emit_detector(fused, ckpt.state_dict, backbone=spec.backbone, neck=spec.neck, head=spec.head,
                        part="detector", raw_head=True)
    session, official = ort_session(raw.data), _official(ckpt, spec)
    fpn, head = _mmdet_neck_and_head(ckpt, spec)
    total = 0
    for x in _inputs(seed=2):
        outs = session.run(None, {"input": x})
        with torch.no_grad():
            cls, reg = head(fpn(official(torch.from_numpy(x))))
            results = head.predict_by_feat(cls, reg, batch_img_metas=[{"img_shape": x.shape[2:]}] * len(x),
                                           rescale=False)
        for y, r in zip(outs[4:], [*cls, *reg]):
            assert _rel(y, r.numpy()) <= 1e-5
        for b, res in enumerate(results):
            k = int(outs[3][b])
            assert k == len(res.scores) and k > 50
            pairs = pair_detections(outs[0][b, :k], outs[1][b, :k], outs[2][b, :k], res.bboxes.numpy(),
                                    res.scores.numpy(), res.labels.numpy())
            assert len(pairs) == k
            i, j = map(list, zip(*pairs))
            assert np.abs(outs[0][b, i] - res.bboxes.numpy()[j]).max() <= 1e-2  # px, after a 1e-6 feature Δ
            assert (outs[2][b, k:] == -1).all() and (outs[1][b, k:] == 0).all()
            total += k
    assert total > 150


def test_reference_postprocess_equals_mmdetection(mmdet) -> None:
    """vanilladeploy.models.retina_post (the export-time reference) is mmdet's predict_by_feat, bit for bit, on
    random heads."""
    from mmdet.models.dense_heads import RetinaHead
    from mmengine.config import ConfigDict

    spec = RetinaSpec(num_classes=80)
    head = RetinaHead(num_classes=80, in_channels=8, feat_channels=8, anchor_generator=dict(
        type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
        strides=[8, 16, 32, 64, 128]), test_cfg=ConfigDict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                                                           nms=dict(type="nms", iou_threshold=0.5), max_per_img=100))
    g = torch.Generator().manual_seed(3)
    shapes = [(40, 60), (20, 30), (10, 15), (5, 8), (3, 4)]
    cls = [torch.randn(2, 720, h, w, generator=g) - 3 for h, w in shapes]
    reg = [torch.randn(2, 36, h, w, generator=g) * 0.5 for h, w in shapes]
    ref = head.predict_by_feat(cls, reg, batch_img_metas=[{"img_shape": (320, 480)}] * 2, rescale=False)
    for (boxes, scores, labels), r in zip(retina_detections(cls, reg, spec, (320, 480)), ref):
        assert torch.equal(boxes, r.bboxes) and torch.equal(scores, r.scores) and torch.equal(labels, r.labels)


def test_mask_rcnn_neck_equals_mmdetection_fpn(mmdet, tmp_path: Path) -> None:
    ckpt = load_checkpoint(save_detector(tmp_path / "m.pth", MASK_RCNN))
    spec = recognize_detector(ckpt)
    result = export_detector(ckpt, DetectionExportOptions(out_dir=tmp_path / "n", sizes=SIZES[1:]))
    assert result.report["part"] == "neck"
    session = ort_session(result.onnx)
    assert [o.name for o in session.get_outputs()] == ["p2", "p3", "p4", "p5", "p6"]
    fpn, _ = _mmdet_neck_and_head(ckpt, spec)
    x = _inputs()[1]
    with torch.no_grad():
        refs = fpn(_official(ckpt, spec)(torch.from_numpy(x)))
    for y, r in zip(session.run(None, {"input": x}), refs):
        assert _rel(y, r.numpy()) <= 1e-5


def test_kind_constants_are_the_mmdetection_type_names() -> None:
    assert (RETINANET, MASK_RCNN) == ("RetinaNet", "MaskRCNN")
