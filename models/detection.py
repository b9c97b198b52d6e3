"""VanillaNet as a detection backbone, and the FPN and RetinaHead of the official COCO detectors (mmdetection 2.x).

Parameter names follow the official files so their checkpoints load 1:1 under the prefixes ``backbone.``, ``neck.``
and ``bbox_head.``:

- backbone, training form (official ``object_detection/mmdet/models/backbones/vanillanet.py``): ``stem1.{0,1}``,
  ``stem2.{0,1,2}``, ``stages.i.conv1.{0,1}``, ``stages.i.conv2.{0,1}``, ``stages.i.act.{weight,bn}`` — the
  classifier's names without its head; there is no LeakyReLU between conv1 and conv2 (no λ), so the pair is linear.
- backbone, deploy form: ``stem.{0,1}``, ``stages.i.conv``, ``stages.i.act.{weight,bias}``.
- neck (mmdet ``FPN``): ``lateral_convs.i.conv``, ``fpn_convs.i.conv`` (the extra levels are the last fpn_convs).
- head (mmdet ``RetinaHead``): ``cls_convs.i.conv``, ``reg_convs.i.conv``, ``retina_cls``, ``retina_reg``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from vanilladeploy.models.vanillanet import VARIANTS, Block, SeriesActivation, _conv_bn


def sub_state_dict(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix.`` (``backbone``, ``neck``, ``bbox_head``), with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in state_dict.items() if k.startswith(f"{prefix}.")}


class VanillaNetBackbone(nn.Module):
    """The stem and stages of VanillaNet; ``forward`` returns the outputs of the stages in ``out_indices``."""

    def __init__(self, dims: tuple[int, ...], strides: tuple[int, ...], out_indices: tuple[int, ...], *,
                 act_num: int = 4, in_chans: int = 3, deploy: bool = False) -> None:
        super().__init__()
        if len(dims) != len(strides) + 1:
            raise ValueError(f"need len(dims) == len(strides) + 1, got {len(dims)} and {len(strides)}")
        self.out_indices, self.deploy = tuple(out_indices), deploy
        if deploy:
            self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4),
                                      SeriesActivation(dims[0], act_num, deploy=True))
        else:
            self.stem1 = _conv_bn(in_chans, dims[0], 4, stride=4)
            self.stem2 = nn.Sequential(*_conv_bn(dims[0], dims[0]), SeriesActivation(dims[0], act_num))
        # a training-form Block applies LeakyReLU(λ = 1) between conv1 and conv2: the identity, as in the official
        # detection backbone, which has nothing there
        self.stages = nn.ModuleList(Block(dims[i], dims[i + 1], act_num=act_num, stride=s, deploy=deploy)
                                    for i, s in enumerate(strides))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.stem(x) if self.deploy else self.stem2(self.stem1(x))
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


class _ConvModule(nn.Module):
    """mmcv's ConvModule without norm or activation: a conv named ``conv``."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


@dataclass(frozen=True)
class BackboneSpec:
    dims: tuple[int, ...]
    strides: tuple[int, ...]
    out_indices: tuple[int, ...]
    act_num: int

    @property
    def variant(self) -> str:
        """The classifier variant with these widths and strides (``vanillanet_13`` for the official detectors)."""
        return next((n for n, v in VARIANTS.items() if v.dims == self.dims and v.strides == self.strides
                     and not v.ada_pool), "custom")

    @property
    def feature_strides(self) -> tuple[int, ...]:
        """Stride of each output: 4 (stem) times the stages' strides up to it."""
        return tuple(4 * math.prod(self.strides[:i + 1]) for i in self.out_indices)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return tuple(self.dims[i + 1] for i in self.out_indices)

    @property
    def total_stride(self) -> int:
        return max(self.feature_strides)

    def build(self, *, deploy: bool) -> VanillaNetBackbone:
        return VanillaNetBackbone(self.dims, self.strides, self.out_indices, act_num=self.act_num, deploy=deploy)


@dataclass(frozen=True)
class FPNSpec:
    """mmdet ``FPN``'s arguments (the ones the official detectors set)."""

    in_channels: tuple[int, ...]
    out_channels: int = 256
    num_outs: int = 5
    start_level: int = 0
    add_extra_convs: str | bool = "on_input"
    relu_before_extra_convs: bool = False

    @property
    def extra_levels(self) -> int:
        return self.num_outs - (len(self.in_channels) - self.start_level)


class FPN(nn.Module):
    """mmdet's FPN: 1x1 laterals, top-down nearest upsampling and addition, 3x3 outputs; extra levels by max-pooling
    (``add_extra_convs=False``) or stride-2 3x3 convs on the last input / lateral / output."""

    def __init__(self, spec: FPNSpec) -> None:
        super().__init__()
        self.spec = spec
        used = spec.in_channels[spec.start_level:]
        self.lateral_convs = nn.ModuleList(_ConvModule(c, spec.out_channels, 1) for c in used)
        convs = [_ConvModule(spec.out_channels, spec.out_channels, 3) for _ in used]
        if spec.add_extra_convs:
            for i in range(spec.extra_levels):
                c_in = used[-1] if i == 0 and spec.add_extra_convs == "on_input" else spec.out_channels
                convs.append(_ConvModule(c_in, spec.out_channels, 3, stride=2))
        self.fpn_convs = nn.ModuleList(convs)

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        spec, used = self.spec, inputs[self.spec.start_level:]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, used)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode="nearest")
        outs = [self.fpn_convs[i](lat) for i, lat in enumerate(laterals)]
        for i in range(spec.extra_levels):
            if not spec.add_extra_convs:
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
                continue
            if i == 0:
                source = {"on_input": used[-1], "on_lateral": laterals[-1]}.get(spec.add_extra_convs, outs[-1])
            else:
                source = F.relu(outs[-1]) if spec.relu_before_extra_convs else outs[-1]
            outs.append(self.fpn_convs[len(laterals) + i](source))
        return tuple(outs)


@dataclass(frozen=True)
class RetinaSpec:
    """RetinaHead, its anchors and box coder, and the test-time post-processing (mmdetection's ``test_cfg``)."""

    num_classes: int = 80
    stacked_convs: int = 4
    feat_channels: int = 256
    octave_base_scale: float = 4.0
    scales_per_octave: int = 3
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    center_offset: float = 0.0
    target_means: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    target_stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    nms_pre: int = 1000
    score_thr: float = 0.05
    iou_threshold: float = 0.5
    max_per_img: int = 100
    min_bbox_size: float = 0.0

    @property
    def num_anchors(self) -> int:
        return len(self.ratios) * self.scales_per_octave


class RetinaHead(nn.Module):
    """mmdet's RetinaHead: per level, ``stacked_convs`` 3x3 conv + ReLU towers (shared weights across levels) for
    classification and regression, then ``retina_cls`` (A·classes logits) and ``retina_reg`` (A·4 deltas)."""

    def __init__(self, *, num_classes: int, in_channels: int, feat_channels: int, stacked_convs: int,
                 num_anchors: int) -> None:
        super().__init__()
        self.cls_convs = nn.ModuleList(_ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3)
                                       for i in range(stacked_convs))
        self.reg_convs = nn.ModuleList(_ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3)
                                       for i in range(stacked_convs))
        self.retina_cls = nn.Conv2d(feat_channels, num_anchors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(feat_channels, num_anchors * 4, 3, padding=1)

    def forward(self, feats: tuple[Tensor, ...]) -> tuple[list[Tensor], list[Tensor]]:
        cls_scores, bbox_preds = [], []
        for x in feats:
            c, r = x, x
            for conv in self.cls_convs:
                c = F.relu(conv(c))
            for conv in self.reg_convs:
                r = F.relu(conv(r))
            cls_scores.append(self.retina_cls(c))
            bbox_preds.append(self.retina_reg(r))
        return cls_scores, bbox_preds


__all__ = ["BackboneSpec", "FPN", "FPNSpec", "RetinaHead", "RetinaSpec", "VanillaNetBackbone", "sub_state_dict"]
