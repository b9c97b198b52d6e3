"""RetinaNet's test-time post-processing in plain torch: anchors, delta decoding, score filter, per-class NMS.

The math of mmdetection's ``RetinaHead.predict_by_feat`` (2.18 and later, and 3.x; the tests hold this module equal
to mmdet 3.3's own code): per level, sigmoid scores of every (anchor, class) pair, those above ``score_thr``, the
``nms_pre`` best; their anchors' deltas decoded (``DeltaXYWHBBoxCoder``, boxes clipped to the input); boxes no wider
or taller than ``min_bbox_size`` dropped; greedy NMS per class (IoU > ``iou_threshold`` suppresses); the
``max_per_img`` best. It is the reference the exported graph (:mod:`vanilladeploy.exporters.nms`) is checked against
when mmdetection is not installed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vanilladeploy.models.detection import RetinaSpec

WH_RATIO_CLIP = 16 / 1000
"""mmdetection's ``DeltaXYWHBBoxCoder`` clamps log-size deltas to ±|log(16/1000)|."""


def base_anchors(spec: RetinaSpec, level: int) -> Tensor:
    """The A = ratios × scales anchors of one level around (0, 0), (x1, y1, x2, y2), ratios outer (mmdet's
    ``scale_major``): w = s·b·√(1/r)·2^(i/n), h = s·b·√r·2^(i/n) with b the level's stride."""
    size = float(spec.anchor_strides[level])
    scales = spec.octave_base_scale * 2.0 ** (torch.arange(spec.scales_per_octave, dtype=torch.float32)
                                              / spec.scales_per_octave)
    h_ratios = torch.sqrt(torch.tensor(spec.ratios, dtype=torch.float32))
    ws = (size * (1 / h_ratios)[:, None] * scales[None, :]).reshape(-1)
    hs = (size * h_ratios[:, None] * scales[None, :]).reshape(-1)
    c = spec.center_offset * size
    return torch.stack([c - 0.5 * ws, c - 0.5 * hs, c + 0.5 * ws, c + 0.5 * hs], dim=-1)


def grid_anchors(spec: RetinaSpec, level: int, height: int, width: int) -> Tensor:
    """Every anchor of a (height, width) feature map, ordered (y, x, anchor): (height·width·A, 4)."""
    stride = float(spec.anchor_strides[level])
    xs = torch.arange(width, dtype=torch.float32) * stride
    ys = torch.arange(height, dtype=torch.float32) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
    return (base_anchors(spec, level)[None] + shifts).reshape(-1, 4)


def decode_boxes(anchors: Tensor, deltas: Tensor, spec: RetinaSpec, img_hw: tuple[int, int]) -> Tensor:
    """``DeltaXYWHBBoxCoder.decode``: centre moved by (dx·w, dy·h), size scaled by exp(dw), exp(dh) (clamped),
    then clipped to the image."""
    deltas = deltas * deltas.new_tensor(spec.target_stds) + deltas.new_tensor(spec.target_means)
    pxy, pwh = (anchors[..., :2] + anchors[..., 2:]) * 0.5, anchors[..., 2:] - anchors[..., :2]
    limit = abs(math.log(WH_RATIO_CLIP))
    gxy = pxy + pwh * deltas[..., :2]
    gwh = pwh * deltas[..., 2:].clamp(min=-limit, max=limit).exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    bound = boxes.new_tensor([img_hw[1], img_hw[0], img_hw[1], img_hw[0]])
    return torch.minimum(boxes.clamp(min=0), bound)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.minimum(a[:, None, 2:], b[None, :, 2:]) - torch.maximum(a[:, None, :2], b[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: indices kept, best score first; a box is dropped when its IoU with a kept one exceeds the
    threshold."""
    order = scores.argsort(descending=True, stable=True)
    iou = box_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def _level_candidates(cls: Tensor, reg: Tensor, spec: RetinaSpec, level: int, img_hw: tuple[int, int]
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """One image's one level: the ``nms_pre`` best (anchor, class) pairs above ``score_thr``, decoded."""
    c, h, w = spec.num_classes, cls.shape[-2], cls.shape[-1]
    scores = cls.permute(1, 2, 0).reshape(-1).sigmoid()
    valid = torch.nonzero(scores > spec.score_thr).squeeze(1)
    top, order = scores[valid].sort(descending=True, stable=True)
    top, idx = top[:spec.nms_pre], valid[order[:spec.nms_pre]]
    anchor, label = idx // c, idx % c
    deltas = reg.permute(1, 2, 0).reshape(-1, 4)[anchor]
    return decode_boxes(grid_anchors(spec, level, h, w)[anchor], deltas, spec, img_hw), top, label


@torch.no_grad()
def retina_detections(cls_scores: list[Tensor], bbox_preds: list[Tensor], spec: RetinaSpec,
                      img_hw: tuple[int, int]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per image of the batch: (boxes (k, 4) in input pixels, scores (k,), labels (k,)), best first, k ≤
    ``max_per_img``."""
    results = []
    for b in range(cls_scores[0].shape[0]):
        parts = [_level_candidates(cls[b], reg[b], spec, lvl, img_hw)
                 for lvl, (cls, reg) in enumerate(zip(cls_scores, bbox_preds))]
        boxes, scores, labels = (torch.cat(t) for t in zip(*parts))
        wh = boxes[:, 2:] - boxes[:, :2]
        ok = (wh[:, 0] > spec.min_bbox_size) & (wh[:, 1] > spec.min_bbox_size)
        boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
        keep = torch.cat([torch.nonzero(labels == c).squeeze(1)[nms(boxes[labels == c], scores[labels == c],
                                                                     spec.iou_threshold)]
                          for c in labels.unique()]) if len(labels) else labels
        keep = keep[scores[keep].argsort(descending=True, stable=True)][:spec.max_per_img]
        results.append((boxes[keep], scores[keep], labels[keep]))
    return results


__all__ = ["base_anchors", "box_iou", "decode_boxes", "grid_anchors", "nms", "retina_detections"]
