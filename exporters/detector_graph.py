"""One part of a fused VanillaNet detector as a checked ONNX model: the backbone's features, the FPN's levels, or
RetinaNet's boxes (:mod:`.detection_onnx` for the networks, :mod:`.nms` for the post-processing)."""

from __future__ import annotations

from collections.abc import Mapping

from onnx import TensorProto
from torch import Tensor

from vanilladeploy.exporters.detection_onnx import (
    Net,
    emit_backbone,
    emit_fpn,
    emit_retina_head,
    level_name,
    make_model,
)
from vanilladeploy.exporters.nms import emit_retina_postprocess, output_specs
from vanilladeploy.exporters.onnx_export import EmittedOnnx
from vanilladeploy.models.detection import BackboneSpec, FPNSpec, RetinaSpec, sub_state_dict


def level_strides(backbone: BackboneSpec, neck: FPNSpec) -> list[int]:
    first = backbone.feature_strides[neck.start_level]
    return [first * 2 ** i for i in range(neck.num_outs)]


def graph_outputs(backbone: BackboneSpec, neck: FPNSpec, head: RetinaSpec | None, part: str, *,
                  raw_head: bool = False) -> list[tuple[str, int, list]]:
    """(name, element type, shape) of each output of ``part``."""
    if part == "backbone":
        return [(level_name("c", s), TensorProto.FLOAT, ["batch", c, f"h{s}", f"w{s}"])
                for s, c in zip(backbone.feature_strides, backbone.feature_channels)]
    strides = level_strides(backbone, neck)
    levels = [(level_name("p", s), TensorProto.FLOAT, ["batch", neck.out_channels, f"h{s}", f"w{s}"])
              for s in strides]
    if part == "neck":
        return levels
    assert head is not None
    outs = output_specs(head)
    if raw_head:
        outs += [(f"cls_{level_name('p', s)[1:]}", TensorProto.FLOAT, ["batch", head.num_anchors * head.num_classes,
                                                                      f"h{s}", f"w{s}"]) for s in strides]
        outs += [(f"reg_{level_name('p', s)[1:]}", TensorProto.FLOAT, ["batch", head.num_anchors * 4, f"h{s}",
                                                                      f"w{s}"]) for s in strides]
    return outs


def emit_detector(backbone_state: Mapping[str, Tensor], state_dict: Mapping[str, Tensor], *, backbone: BackboneSpec,
                  neck: FPNSpec, head: RetinaSpec | None, part: str, raw_head: bool = False,
                  metadata: Mapping[str, str] | None = None, name: str = "vanillanet_detector") -> EmittedOnnx:
    """``part`` of the detector: the fused backbone (``backbone_state``, deploy form), then the checkpoint's own
    ``neck.*`` and ``bbox_head.*`` from ``state_dict``. ``raw_head`` adds the head's raw outputs (verification)."""
    g = Net()
    outputs = graph_outputs(backbone, neck, head, part, raw_head=raw_head)
    names = [n for n, _, _ in outputs]
    feats = emit_backbone(g, backbone_state, strides=backbone.strides, out_indices=backbone.out_indices,
                          act_num=backbone.act_num, names=names if part == "backbone" else None)
    if part != "backbone":
        levels = emit_fpn(g, sub_state_dict(state_dict, "neck"), neck, feats, names=names if part == "neck" else None)
        if part == "detector":
            assert head is not None
            cls, reg = emit_retina_head(g, sub_state_dict(state_dict, "bbox_head"), head, levels)
            emit_retina_postprocess(g, head, cls, reg)
            if raw_head:
                n = len(levels)
                for x, out in zip(cls + reg, names[-2 * n:]):
                    g.node("Identity", [x], out=out)
    return make_model(g, outputs, name=name, metadata=metadata)


__all__ = ["emit_detector", "graph_outputs", "level_strides"]
