"""RetinaNet's post-processing as ONNX nodes: anchors from the feature shapes, score filter and per-level top-k,
delta decoding, per-class ``NonMaxSuppression``, the best ``max_per_img`` — the math of
:func:`vanilladeploy.models.retina_post.retina_detections`, for a dynamic batch, height and width.

NMS is ONNX's own ``NonMaxSuppression`` with a class axis (scores (batch, classes, boxes), each candidate scoring
only in its own class): per-class NMS exactly, no coordinate-offset trick whose large offsets cost float precision.
ONNX Runtime, OpenVINO and TensorRT's ONNX parser (TensorRT ≥ 8.5) all take the op. Outputs, padded to
``max_per_img``: ``boxes`` (batch, max_per_img, 4) x1 y1 x2 y2 in the input tensor's pixels, ``scores``, ``labels``
(int64; -1 and score 0 in padding) and ``num_detections`` (batch,) int64.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from vanilladeploy.exporters.detection_onnx import INPUT_NAME, Net
from vanilladeploy.models.detection import RetinaSpec
from vanilladeploy.models.retina_post import WH_RATIO_CLIP, base_anchors

OUTPUTS = ("boxes", "scores", "labels", "num_detections")


def _i64(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _f32(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _dim(g: Net, x: str, axis: int) -> str:
    """``shape(x)[axis]`` as a 1-element int64 tensor."""
    return g.node("Gather", [g.node("Shape", [x]), g.const(f"axis_{axis}", _i64(axis))], axis=0)


def _grid_anchors(g: Net, spec: RetinaSpec, level: int, feature: str) -> str:
    """(h·w·A, 4) anchors of one level, ordered (y, x, anchor), computed from the feature map's shape."""
    stride = float(spec.anchor_strides[level])
    h, w = _dim(g, feature, 2), _dim(g, feature, 3)
    zero, one = g.const("i64_0", np.asarray(0, np.int64)), g.const("i64_1", np.asarray(1, np.int64))
    scalar = g.const("shape_scalar", _i64())
    stride_c = g.const(f"anchors/stride.{level}", np.asarray(stride, np.float32))

    def axis_shifts(n: str) -> str:
        r = g.node("Range", [zero, g.node("Reshape", [n, scalar]), one])
        return g.node("Mul", [g.node("Cast", [r], to=TensorProto.FLOAT), stride_c])

    hw = g.node("Concat", [h, w], axis=0)
    xx = g.node("Expand", [g.node("Unsqueeze", [axis_shifts(w), g.const("axes_0", _i64(0))]), hw])
    yy = g.node("Expand", [g.node("Unsqueeze", [axis_shifts(h), g.const("axes_1", _i64(1))]), hw])
    last = g.const("axes_-1", _i64(-1))
    xx, yy = g.node("Unsqueeze", [xx, last]), g.node("Unsqueeze", [yy, last])
    shifts = g.node("Reshape", [g.node("Concat", [xx, yy, xx, yy], axis=-1), g.const("shape_-1_1_4",
                                                                                      _i64(-1, 1, 4))])
    base = g.const(f"anchors/base.{level}", base_anchors(spec, level).numpy()[None])
    return g.node("Reshape", [g.node("Add", [shifts, base]), g.const("shape_-1_4", _i64(-1, 4))])


def _gather_rows(g: Net, data: str, index: str, width: int) -> str:
    """``data[b, index[b, k], :]``: (batch, k, width) from (batch, n, width) and (batch, k)."""
    idx = g.node("Unsqueeze", [index, g.const("axes_-1", _i64(-1))])
    shape = g.node("Concat", [g.node("Shape", [index]), g.const(f"width_{width}", _i64(width))], axis=0)
    return g.node("GatherElements", [data, g.node("Expand", [idx, shape])], axis=1)


def _decode(g: Net, spec: RetinaSpec, anchors: str, deltas: str, bound: str) -> str:
    """DeltaXYWHBBoxCoder.decode on (batch, k, 4), clipped to ``bound`` = (W, H, W, H)."""
    d = g.node("Add", [g.node("Mul", [deltas, g.const("coder/stds", _f32(*spec.target_stds))]),
                       g.const("coder/means", _f32(*spec.target_means))])
    split = g.const("split_2_2", _i64(2, 2))
    a_lo, a_hi = g.multi("Split", [anchors, split], 2, axis=-1)
    d_xy, d_wh = g.multi("Split", [d, split], 2, axis=-1)
    half = g.const("half", _f32(0.5))
    pxy = g.node("Mul", [g.node("Add", [a_lo, a_hi]), half])
    pwh = g.node("Sub", [a_hi, a_lo])
    limit = abs(math.log(WH_RATIO_CLIP))
    d_wh = g.node("Clip", [d_wh, g.const("coder/min", np.asarray(-limit, np.float32)),
                           g.const("coder/max", np.asarray(limit, np.float32))])
    gxy = g.node("Add", [pxy, g.node("Mul", [pwh, d_xy])])
    half_wh = g.node("Mul", [g.node("Mul", [pwh, g.node("Exp", [d_wh])]), half])
    boxes = g.node("Concat", [g.node("Sub", [gxy, half_wh]), g.node("Add", [gxy, half_wh])], axis=-1)
    return g.node("Min", [g.node("Max", [boxes, g.const("f32_0", _f32(0.0))]), bound])


def _level(g: Net, spec: RetinaSpec, level: int, cls: str, reg: str, bound: str) -> tuple[str, str, str]:
    """One level's ``nms_pre`` best (anchor, class) pairs: (boxes, scores, labels), masked scores -1 (also the
    padding where the level has fewer pairs)."""
    c = spec.num_classes
    flat = g.const("shape_0_-1", _i64(0, -1))
    scores = g.node("Reshape", [g.node("Transpose", [g.node("Sigmoid", [cls])], perm=[0, 2, 3, 1]), flat])
    neg = g.const("f32_-1", _f32(-1.0))
    scores = g.node("Where", [g.node("Greater", [scores, g.const("score_thr", _f32(spec.score_thr))]), scores, neg])
    # padded with nms_pre entries scoring -1, so that TopK's k is the constant nms_pre at any size (TensorRT needs k
    # constant); a padded entry's index, taken modulo the real count, points at a real anchor and is masked by -1
    n = _dim(g, scores, 1)
    pad = g.node("ConstantOfShape", [g.node("Concat", [_dim(g, scores, 0), g.const("nms_pre", _i64(spec.nms_pre))],
                                            axis=0)], value=_tensor(-1.0))
    top, idx = g.multi("TopK", [g.node("Concat", [scores, pad], axis=1), "nms_pre"], 2, axis=1, largest=1,
                       sorted=1)
    idx = g.node("Mod", [idx, n])
    classes = g.const("num_classes", _i64(c))
    anchor, label = g.node("Div", [idx, classes]), g.node("Mod", [idx, classes])
    deltas = g.node("Reshape", [g.node("Transpose", [reg], perm=[0, 2, 3, 1]), g.const("shape_0_-1_4",
                                                                                       _i64(0, -1, 4))])
    anchors = g.node("Gather", [_grid_anchors(g, spec, level, cls), anchor], axis=0)
    return _decode(g, spec, anchors, _gather_rows(g, deltas, anchor, 4), bound), top, label


def emit_retina_postprocess(g: Net, spec: RetinaSpec, cls_outputs: list[str], reg_outputs: list[str]) -> None:
    """Append the post-processing; its outputs are named as :data:`OUTPUTS`."""
    height, width = _dim(g, INPUT_NAME, 2), _dim(g, INPUT_NAME, 3)
    bound = g.node("Cast", [g.node("Concat", [width, height, width, height], axis=0)], to=TensorProto.FLOAT)
    parts = [_level(g, spec, lvl, c, r, bound) for lvl, (c, r) in enumerate(zip(cls_outputs, reg_outputs))]
    boxes, scores, labels = (g.node("Concat", list(p), axis=1) for p in zip(*parts))
    neg = g.const("f32_-1", _f32(-1.0))
    if spec.min_bbox_size >= 0:  # mmdet drops boxes no wider or taller than min_bbox_size before NMS
        lo, hi = g.multi("Split", [boxes, g.const("split_2_2", _i64(2, 2))], 2, axis=-1)
        big = g.node("Greater", [g.node("Sub", [hi, lo]), g.const("min_bbox_size", _f32(spec.min_bbox_size))])
        wide, tall = (g.node("Gather", [big, g.const(f"i64_{i}", np.asarray(i, np.int64))], axis=-1) for i in (0, 1))
        scores = g.node("Where", [g.node("And", [wide, tall]), scores, neg])
    # per class: each candidate scores in its own class only
    per_class = g.node("Where", [
        g.node("Equal", [g.node("Unsqueeze", [labels, g.const("axes_1", _i64(1))]),
                         g.const("class_ids", np.arange(spec.num_classes, dtype=np.int64).reshape(1, -1, 1))]),
        g.node("Unsqueeze", [scores, "axes_1"]), neg])
    selected = g.node("NonMaxSuppression", [boxes, per_class, g.const("nms/max_per_class", _i64(spec.max_per_img)),
                                            g.const("nms/iou", _f32(spec.iou_threshold)),
                                            g.const("nms/score_thr", _f32(spec.score_thr))], center_point_box=0)
    where = g.node("Gather", [selected, g.const("batch_and_box", _i64(0, 2))], axis=1)
    kept = g.node("ScatterND", [g.node("ConstantOfShape", [g.node("Shape", [scores])],
                                       value=_tensor(-1.0)), where, g.node("GatherND", [scores, where])])
    _top_padded(g, spec, boxes, kept, labels)


def _tensor(value: float):
    from onnx import numpy_helper

    return numpy_helper.from_array(_f32(value))


def _top_padded(g: Net, spec: RetinaSpec, boxes: str, kept: str, labels: str) -> None:
    """The ``max_per_img`` best kept candidates, padded with empty slots when fewer exist."""
    m = spec.max_per_img
    batch = _dim(g, INPUT_NAME, 0)
    pad_shape = g.node("Concat", [batch, g.const("max_per_img", _i64(m))], axis=0)
    pad = g.node("ConstantOfShape", [pad_shape], value=_tensor(-1.0))
    kept = g.node("Concat", [kept, pad], axis=1)
    labels = g.node("Concat", [labels, g.node("Cast", [pad], to=TensorProto.INT64)], axis=1)
    box_pad = g.node("ConstantOfShape", [g.node("Concat", [pad_shape, g.const("width_4", _i64(4))], axis=0)],
                     value=_tensor(0.0))
    boxes = g.node("Concat", [boxes, box_pad], axis=1)
    top, index = g.multi("TopK", [kept, "max_per_img"], 2, axis=1, largest=1, sorted=1)
    valid = g.node("Greater", [top, g.const("f32_-0.5", _f32(-0.5))])
    zero = g.const("f32_0", _f32(0.0))
    g.node("Where", [valid, top, zero], out="scores")
    g.node("Where", [valid, g.node("GatherElements", [labels, index], axis=1), g.const("i64_-1", _i64(-1))],
           out="labels")
    valid_box = g.node("Unsqueeze", [valid, g.const("axes_-1", _i64(-1))])
    g.node("Where", [valid_box, _gather_rows(g, boxes, index, 4), zero],
           out="boxes")
    g.node("ReduceSum", [g.node("Cast", [valid], to=TensorProto.INT64), g.const("axes_1", _i64(1))], keepdims=0,
           out="num_detections")


def output_specs(spec: RetinaSpec) -> list[tuple[str, int, list]]:
    m = spec.max_per_img
    return [("boxes", TensorProto.FLOAT, ["batch", m, 4]), ("scores", TensorProto.FLOAT, ["batch", m]),
            ("labels", TensorProto.INT64, ["batch", m]), ("num_detections", TensorProto.INT64, ["batch"])]


__all__ = ["OUTPUTS", "emit_retina_postprocess", "output_specs"]
