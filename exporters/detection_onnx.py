"""The fused VanillaNet detector as an ONNX graph, emitted node by node (as :mod:`.onnx_export` does the classifier).

Input ``input`` (batch, 3, height, width) float32, normalized as the test pipeline says; batch, height and width are
dynamic (height and width: multiples of the backbone's total stride). The part decides the outputs:

- ``backbone``: the features, named by stride, ``c{k}`` at stride 2^k (RetinaNet: c3, c4, c5);
- ``neck``: the FPN levels ``p{k}`` (RetinaNet: p3 … p7; Mask R-CNN: p2 … p6);
- ``detector`` (RetinaNet): ``boxes``, ``scores``, ``labels``, ``num_detections`` (:mod:`.nms`); with
  ``raw_head=True`` also each level's raw ``cls_{k}``/``reg_{k}`` (for verification only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper
from torch import Tensor

from vanilladeploy.exporters.onnx_export import MIN_OPSET, EmittedOnnx, _add_initializer, set_metadata
from vanilladeploy.models.detection import FPNSpec, RetinaSpec

INPUT_NAME = "input"
PARTS = ("backbone", "neck", "detector")


@dataclass
class Net:
    """A graph under construction: ``node`` appends one node and returns its output's name."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    _count: int = 0

    def node(self, op: str, inputs: list[str], *, name: str | None = None, outputs: int = 1, out: str | None = None,
             **attrs) -> str:
        self._count += 1
        base = name or f"{op.lower()}_{self._count}"
        names = [out or f"{base}_out"] + [f"{base}_out{i}" for i in range(1, outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=base, **attrs))
        return names[0]

    def multi(self, op: str, inputs: list[str], outputs: int, **attrs) -> list[str]:
        """A node with several outputs; their names."""
        first = self.node(op, inputs, outputs=outputs, **attrs)
        return [first] + [f"{first}{i}" for i in range(1, outputs)]

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = value
        return name

    def conv(self, x: str, sd: Mapping[str, Tensor], key: str, *, name: str, stride: int = 1, pad: int | None = None,
             group: int = 1) -> str:
        w = sd[f"{key}.weight"].detach().float().numpy()
        k = w.shape[-1]
        inputs = [x, self.const(f"{key}.weight", w), self.const(f"{key}.bias", sd[f"{key}.bias"].detach().float()
                                                                                .numpy())]
        return self.node("Conv", inputs, name=name, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[k // 2 if pad is None else pad] * 4, group=group)


def level_name(prefix: str, stride: int) -> str:
    """``c3`` / ``p5``: the letter and log2 of the stride."""
    return f"{prefix}{int(math.log2(stride))}"


def emit_backbone(g: Net, sd: Mapping[str, Tensor], *, strides: tuple[int, ...], out_indices: tuple[int, ...],
                  act_num: int, names: list[str] | None = None) -> list[str]:
    """The fused backbone (deploy-form state dict, keys ``stem.*``/``stages.*``); returns the feature names."""
    def act(x: str, key: str, name: str) -> str:
        x = g.node("Relu", [x], name=f"{name}/relu")
        return g.conv(x, sd, key, name=f"{name}/act", pad=act_num, group=sd[f"{key}.weight"].shape[0])

    x = act(g.conv(INPUT_NAME, sd, "stem.0", name="stem/conv", stride=4, pad=0), "stem.1", "stem")
    outs, total = [], 4
    for i, s in enumerate(strides):
        x = g.conv(x, sd, f"stages.{i}.conv", name=f"stages.{i}/conv")
        if s != 1:
            x = g.node("MaxPool", [x], name=f"stages.{i}/pool", kernel_shape=[s, s], strides=[s, s])
        total *= s
        x = act(x, f"stages.{i}.act", f"stages.{i}")
        if i in out_indices:
            out_name = names[len(outs)] if names else None
            x = g.node("Identity", [x], name=f"stages.{i}/out", out=out_name) if out_name else x
            outs.append(x)
    return outs


def emit_fpn(g: Net, sd: Mapping[str, Tensor], spec: FPNSpec, feats: list[str], names: list[str] | None = None
             ) -> list[str]:
    """mmdetection's FPN over ``feats`` (neck state dict: ``lateral_convs.i.conv``, ``fpn_convs.i.conv``); top-down
    upsampling is nearest Resize to the next level's own shape, as mmdet's ``interpolate(size=...)``."""
    used = feats[spec.start_level:]
    lats = [g.conv(x, sd, f"lateral_convs.{i}.conv", name=f"neck/lateral.{i}") for i, x in enumerate(used)]
    for i in range(len(lats) - 1, 0, -1):
        size = g.node("Shape", [lats[i - 1]], name=f"neck/size.{i - 1}")
        up = g.node("Resize", [lats[i], "", "", size], name=f"neck/up.{i}", mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        lats[i - 1] = g.node("Add", [lats[i - 1], up], name=f"neck/add.{i - 1}")
    outs = [g.conv(x, sd, f"fpn_convs.{i}.conv", name=f"neck/fpn.{i}") for i, x in enumerate(lats)]
    for i in range(spec.extra_levels):
        k = len(lats) + i
        if not spec.add_extra_convs:
            outs.append(g.node("MaxPool", [outs[-1]], name=f"neck/extra.{k}", kernel_shape=[1, 1], strides=[2, 2]))
            continue
        src = ({"on_input": used[-1], "on_lateral": lats[-1]}.get(spec.add_extra_convs, outs[-1]) if i == 0 else
               g.node("Relu", [outs[-1]], name=f"neck/relu.{k}") if spec.relu_before_extra_convs else outs[-1])
        outs.append(g.conv(src, sd, f"fpn_convs.{k}.conv", name=f"neck/fpn.{k}", stride=2))
    if names:
        outs = [g.node("Identity", [x], name=f"neck/out.{n}", out=n) for x, n in zip(outs, names)]
    return outs


def emit_retina_head(g: Net, sd: Mapping[str, Tensor], spec: RetinaSpec, levels: list[str]
                     ) -> tuple[list[str], list[str]]:
    """RetinaHead on every level, its conv towers' weights shared (one initializer each); raw logits and deltas."""
    cls_out, reg_out = [], []
    for lvl, p in enumerate(levels):
        c = r = p
        for i in range(spec.stacked_convs):
            c = g.node("Relu", [g.conv(c, sd, f"cls_convs.{i}.conv", name=f"head/{lvl}/cls.{i}")],
                       name=f"head/{lvl}/cls.{i}/relu")
            r = g.node("Relu", [g.conv(r, sd, f"reg_convs.{i}.conv", name=f"head/{lvl}/reg.{i}")],
                       name=f"head/{lvl}/reg.{i}/relu")
        cls_out.append(g.conv(c, sd, "retina_cls", name=f"head/{lvl}/retina_cls"))
        reg_out.append(g.conv(r, sd, "retina_reg", name=f"head/{lvl}/retina_reg"))
    return cls_out, reg_out


NETWORK_PREFIXES = ("stem/", "stages.", "neck/", "head/")
"""Names of the nodes of the networks (backbone, FPN, head); every other node is post-processing."""


def is_postprocess(node: onnx.NodeProto) -> bool:
    """Whether a node of an emitted detector belongs to its post-processing (anchors, decoding, NMS)."""
    return not node.name.startswith(NETWORK_PREFIXES)


def keeps_fp32(node: onnx.NodeProto) -> bool:
    """The nodes an fp16 detector keeps in float32: the post-processing, and the FPN's nearest Resize (exact in
    any type, and ONNX Runtime's CPU Resize has no float16 kernel)."""
    return is_postprocess(node) or node.op_type == "Resize"


def make_model(g: Net, outputs: list[tuple[str, int, list]], *, name: str, opset: int = MIN_OPSET,
               metadata: Mapping[str, str] | None = None) -> EmittedOnnx:
    """The graph with input ``input`` (batch, 3, height, width) and ``outputs`` (name, element type, shape),
    checked (``onnx.checker``, full)."""
    graph = helper.make_graph(
        g.nodes, name, [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info(n, t, shape) for n, t, shape in outputs])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="vanilladeploy",
                              ir_version=helper.find_min_ir_version_for(opsets))
    for key, value in g.initializers.items():
        _add_initializer(model.graph, key, value)
    set_metadata(model, metadata or {})
    data = model.SerializeToString()
    onnx.checker.check_model(data, full_check=True)
    return EmittedOnnx(model, data)


__all__ = ["INPUT_NAME", "NETWORK_PREFIXES", "Net", "PARTS", "emit_backbone", "emit_fpn", "emit_retina_head",
           "is_postprocess", "keeps_fp32", "level_name", "make_model"]
