"""Checks of an exported detector: the graph contract, and detections against the reference post-processing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from vanilladeploy.models.detection import BackboneSpec, RetinaSpec
from vanilladeploy.models.retina_post import retina_detections

SCORE_TOLERANCE = 1e-5
BOX_TOLERANCE_PX = 1e-3
"""Boxes are in pixels (up to 1344): 1e-3 px is float32 rounding of the decoding, nothing more."""


@dataclass(frozen=True)
class GraphContract:
    nodes: int
    ops: dict[str, int]
    problems: tuple[str, ...]

    def __bool__(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"passed": bool(self), "ops": self.ops, "problems": list(self.problems)}


def check_detection_graph(model: onnx.ModelProto, backbone: BackboneSpec) -> GraphContract:
    """No BatchNormalization (or LeakyRelu, the training form's), and the backbone is one dense and one depthwise
    Conv per weight layer (stem + stages) — nodes named ``stem/…`` and ``stages.i/…`` by the emitter."""
    ops = Counter(n.op_type for n in model.graph.node)
    problems = [f"{ops[op]} {op} node(s)" for op in ("BatchNormalization", "LeakyRelu") if ops[op]]
    layers = 1 + len(backbone.strides)
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith(("stem/", "stages."))]
    depthwise = [n for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    if len(convs) - len(depthwise) != layers or len(depthwise) != layers:
        problems.append(f"the backbone has {len(convs) - len(depthwise)} dense and {len(depthwise)} depthwise Convs; "
                        f"a fused VanillaNet backbone of {layers} weight layers has {layers} of each")
    return GraphContract(len(model.graph.node), dict(sorted(ops.items())), tuple(problems))


@dataclass(frozen=True)
class DetectionMatch:
    """One batch of graph detections against the reference: per image, the same count, labels and boxes, scores
    within :data:`SCORE_TOLERANCE`."""

    counts: tuple[int, ...]
    reference_counts: tuple[int, ...]
    max_box_diff_px: float
    max_score_diff: float
    labels_equal: bool
    problems: tuple[str, ...] = field(default=())

    def __bool__(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return "; ".join(self.problems) or (f"{sum(self.counts)} detections equal (box Δ ≤ "
                                            f"{self.max_box_diff_px:.1e} px, score Δ ≤ {self.max_score_diff:.1e})")

    def as_dict(self) -> dict[str, Any]:
        return {"passed": bool(self), "detections": list(self.counts), "reference": list(self.reference_counts),
                "max_box_diff_px": self.max_box_diff_px, "max_score_diff": self.max_score_diff,
                "labels_equal": self.labels_equal, "problems": list(self.problems)}


def pair_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, ref_boxes: np.ndarray,
                    ref_scores: np.ndarray, ref_labels: np.ndarray, *, score_tolerance: float = SCORE_TOLERANCE
                    ) -> list[tuple[int, int]]:
    """Pairs (i, j) of a detection and a reference one with the same label and scores within ``score_tolerance``,
    each taking the closest free box (L∞): order-free, so two detections whose scores tie in float32 (common near
    1.0, where float32 steps by 6e-8) match whichever way each side sorted them."""
    free, pairs = np.ones(len(ref_scores), dtype=bool), []
    for i in range(len(scores)):
        ok = free & (ref_labels == labels[i]) & (np.abs(ref_scores - scores[i]) <= score_tolerance)
        if ok.any():
            dist = np.where(ok, np.abs(ref_boxes - boxes[i]).max(axis=1, initial=0.0), np.inf)
            j = int(dist.argmin())
            free[j] = False
            pairs.append((i, j))
    return pairs


def match_detections(outputs: Sequence[np.ndarray], raw_head: Sequence[np.ndarray], head: RetinaSpec,
                     img_hw: Sequence[int]) -> DetectionMatch:
    """The graph's (boxes, scores, labels, num_detections) against :func:`retina_detections` run on the graph's own
    raw head outputs (levels' logits, then deltas): per image the same count, every detection paired
    (:func:`pair_detections`) with a reference one of the same label, box within :data:`BOX_TOLERANCE_PX`."""
    boxes, scores, labels, counts = outputs[:4]
    n = len(raw_head) // 2
    refs = retina_detections([torch.from_numpy(t) for t in raw_head[:n]],
                             [torch.from_numpy(t) for t in raw_head[n:]], head, (int(img_hw[0]), int(img_hw[1])))
    problems, box_d, score_d, labels_ok = [], 0.0, 0.0, True
    for b, (rb, rs, rl) in enumerate(refs):
        k = int(counts[b])
        rb, rs, rl = rb.numpy(), rs.numpy(), rl.numpy()
        pairs = pair_detections(boxes[b, :k], scores[b, :k], labels[b, :k], rb, rs, rl)
        if k != len(rs) or len(pairs) != k:
            labels_ok = False
            problems.append(f"image {b}: {k} detections, reference {len(rs)}, {len(pairs)} paired by label and score")
        for i, j in pairs:
            box_d = max(box_d, float(np.abs(boxes[b, i] - rb[j]).max()))
            score_d = max(score_d, abs(float(scores[b, i]) - float(rs[j])))
    if box_d > BOX_TOLERANCE_PX or score_d > SCORE_TOLERANCE:
        problems.append(f"box Δ {box_d:.2e} px (≤ {BOX_TOLERANCE_PX}), score Δ {score_d:.2e} (≤ {SCORE_TOLERANCE})")
    return DetectionMatch(tuple(int(c) for c in counts), tuple(len(r[1]) for r in refs), box_d, score_d, labels_ok,
                          tuple(problems))


__all__ = ["BOX_TOLERANCE_PX", "DetectionMatch", "GraphContract", "SCORE_TOLERANCE", "check_detection_graph",
           "match_detections", "pair_detections"]
