"""Which detector a detection checkpoint is: RetinaNet or Mask R-CNN with a VanillaNet backbone (mmdetection 2.x).

Widths and act_num come from the tensors; strides, out_indices, the neck's and head's settings, the test-time
post-processing and the preprocessing from the config — ``meta['config']`` or ``--det-config FILE``, parsed as plain
data (:mod:`vanilladeploy.det_config`), never executed — and where neither says, from the official configs
(``object_detection/configs/vanillanet/*_vanillanet_13_*.py`` over mmdetection's ``retinanet_r50_fpn.py`` /
``mask_rcnn_r50_fpn.py``). Every value records where it came from. Then every key and shape of the backbone, neck
and (RetinaNet) head is checked against the modules of :mod:`vanilladeploy.models.detection`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vanilladeploy.arch import read_dims
from vanilladeploy.checkpoint import Checkpoint
from vanilladeploy.det_config import parse_config
from vanilladeploy.errors import ArchitectureError, UsageError
from vanilladeploy.models.detection import FPN, BackboneSpec, FPNSpec, RetinaHead, RetinaSpec, sub_state_dict

OFFICIAL = "official config"
RETINANET, MASK_RCNN = "RetinaNet", "MaskRCNN"
OFFICIAL_STRIDES = (1, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1)
OFFICIAL_OUT_INDICES = {RETINANET: (1, 8, 10), MASK_RCNN: (0, 1, 8, 10)}
PIXEL_MEAN, PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class PipelineSpec:
    """The test pipeline: keep-ratio resize to ``img_scale`` (long, short), normalize in RGB, pad to a multiple."""

    img_scale: tuple[int, int] = (1333, 800)
    mean: tuple[float, ...] = PIXEL_MEAN
    std: tuple[float, ...] = PIXEL_STD
    size_divisor: int = 32


@dataclass(frozen=True)
class DetectorSpec:
    kind: str
    backbone: BackboneSpec
    neck: FPNSpec
    head: RetinaSpec | None
    """None for Mask R-CNN: its RPN and RoI heads are not supported yet."""
    pipeline: PipelineSpec
    classes: tuple[str, ...] | None
    mmdet_version: str | None
    sources: dict[str, str] = field(default_factory=dict)
    """Where each setting came from: ``meta['config']``, ``--det-config FILE``, the tensors or the official config."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["backbone"].update(variant=self.backbone.variant, feature_strides=list(self.backbone.feature_strides))
        return out


def _get(cfg: Mapping[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(cfg, Mapping) or key not in cfg:
            return None
        cfg = cfg[key]
    return cfg


def _ints(value: Any, name: str, *, positive: bool = True) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                       and (v > 0 or not positive and v >= 0) for v in value):
        raise ArchitectureError(f"config {name} is {value!r}; expected a list of "
                                f"{'positive' if positive else 'non-negative'} integers.")
    return tuple(value)


def _number(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ArchitectureError(f"config {name} is {value!r}; expected a number.")
    return float(value)


class _Reader:
    """Reads settings from the parsed config, else the official default, recording the source of each."""

    def __init__(self, cfg: Mapping[str, Any], config_source: str) -> None:
        self.cfg, self.config_source, self.sources = cfg, config_source, {}

    def get(self, name: str, path: tuple[str, ...], default: Any) -> Any:
        value = _get(self.cfg, *path)
        self.sources[name] = self.config_source if value is not None else OFFICIAL
        return default if value is None else value


def _kind(state_dict: Mapping[str, Tensor], model_type: Any, source: str) -> str:
    if model_type is not None and model_type not in (RETINANET, MASK_RCNN):
        raise ArchitectureError(f"{source}: model type {model_type!r} is not supported; vanilladeploy knows "
                                f"{RETINANET} and {MASK_RCNN} with a VanillaNet backbone.")
    if model_type is not None:
        return model_type
    if any(k.startswith("bbox_head.") for k in state_dict):
        return RETINANET
    if any(k.startswith("roi_head.") for k in state_dict):
        return MASK_RCNN
    raise ArchitectureError(f"{source}: the keys have no 'bbox_head.*' (RetinaNet) or 'roi_head.*' (Mask R-CNN).")


def _backbone(sd: Mapping[str, Tensor], r: _Reader, kind: str) -> BackboneSpec:
    btype = _get(r.cfg, "model", "backbone", "type")
    if btype is not None and btype != "Vanillanet":
        raise ArchitectureError(f"{r.config_source}: backbone type {btype!r} is not a VanillaNet; vanilladeploy "
                                "fuses the official 'Vanillanet' backbone only.")
    sub = sub_state_dict(sd, "backbone")
    dims, act_num, _ = read_dims({**sub, "cls2.0.weight": torch.empty(1, 1, 1, 1)}, "train")
    r.sources.update(dims="tensor shapes", act_num="tensor shapes")
    for name, found in (("dims", dims), ("act_num", act_num)):
        said = _get(r.cfg, "model", "backbone", name)
        if said is not None and (tuple(said) if isinstance(said, list) else said) != found:
            raise ArchitectureError(f"{r.config_source}: backbone {name} is {said!r} but the weights have {found!r}.")
    strides = _ints(r.get("strides", ("model", "backbone", "strides"), OFFICIAL_STRIDES), "backbone.strides")
    out_indices = _ints(r.get("out_indices", ("model", "backbone", "out_indices"), OFFICIAL_OUT_INDICES[kind]),
                        "backbone.out_indices", positive=False)
    if len(strides) != len(dims) - 1:
        raise ArchitectureError(f"backbone strides {list(strides)} ({r.sources['strides']}) give "
                                f"{len(strides)} stages, but the weights have {len(dims) - 1}.")
    if list(out_indices) != sorted(set(out_indices)) or out_indices[-1] >= len(strides):
        raise ArchitectureError(f"backbone out_indices {list(out_indices)} ({r.sources['out_indices']}) must be "
                                f"increasing stage indices below {len(strides)}.")
    return BackboneSpec(dims, strides, out_indices, act_num)


def _neck(r: _Reader, backbone: BackboneSpec, kind: str) -> FPNSpec:
    ntype = _get(r.cfg, "model", "neck", "type")
    if ntype is not None and ntype != "FPN":
        raise ArchitectureError(f"{r.config_source}: neck type {ntype!r} is not supported (FPN only).")
    in_channels = _ints(r.get("neck.in_channels", ("model", "neck", "in_channels"), backbone.feature_channels),
                        "neck.in_channels")
    if in_channels != backbone.feature_channels:
        raise ArchitectureError(f"neck.in_channels {list(in_channels)} do not fit the backbone's outputs "
                                f"{list(backbone.feature_channels)} (out_indices {list(backbone.out_indices)}).")
    # mmdetection's retinanet_r50_fpn.py sets 'on_input'; mask_rcnn_r50_fpn.py leaves FPN's default (False: p6 by
    # max-pooling, no extra conv)
    extra = r.get("neck.add_extra_convs", ("model", "neck", "add_extra_convs"), "on_input" if kind == RETINANET
                  else False)
    if extra not in (False, True, "on_input", "on_lateral", "on_output"):
        raise ArchitectureError(f"neck.add_extra_convs is {extra!r}; mmdetection knows on_input, on_lateral, "
                                "on_output, True and False.")
    spec = FPNSpec(in_channels,
                   int(_number(r.get("neck.out_channels", ("model", "neck", "out_channels"), 256), "out_channels")),
                   int(_number(r.get("neck.num_outs", ("model", "neck", "num_outs"), 5), "num_outs")),
                   int(_number(r.get("neck.start_level", ("model", "neck", "start_level"), 0), "start_level")),
                   "on_input" if extra is True else extra,
                   bool(r.get("neck.relu_before_extra_convs", ("model", "neck", "relu_before_extra_convs"), False)))
    strides = backbone.feature_strides[spec.start_level:]
    if any(b != 2 * a for a, b in zip(strides, strides[1:])) or spec.extra_levels < 0:
        raise ArchitectureError(f"the FPN levels have strides {list(strides)}; the neck needs each level at twice "
                                "the stride of the one before, and num_outs ≥ the levels used.")
    return spec


def _head(r: _Reader, neck: FPNSpec) -> RetinaSpec:
    htype = _get(r.cfg, "model", "bbox_head", "type")
    if htype is not None and htype != "RetinaHead":
        raise ArchitectureError(f"{r.config_source}: bbox_head type {htype!r} is not supported (RetinaHead only).")
    head, test = ("model", "bbox_head"), ("model", "test_cfg")
    anchor, coder = (*head, "anchor_generator"), (*head, "bbox_coder")
    d = RetinaSpec()
    num = lambda name, path, default: _number(r.get(name, path, default), name)  # noqa: E731
    return RetinaSpec(
        num_classes=int(num("num_classes", (*head, "num_classes"), d.num_classes)),
        stacked_convs=int(num("stacked_convs", (*head, "stacked_convs"), d.stacked_convs)),
        feat_channels=int(num("feat_channels", (*head, "feat_channels"), d.feat_channels)),
        octave_base_scale=num("octave_base_scale", (*anchor, "octave_base_scale"), d.octave_base_scale),
        scales_per_octave=int(num("scales_per_octave", (*anchor, "scales_per_octave"), d.scales_per_octave)),
        ratios=tuple(_number(x, "ratios") for x in r.get("ratios", (*anchor, "ratios"), d.ratios)),
        anchor_strides=_ints(r.get("anchor_strides", (*anchor, "strides"), d.anchor_strides), "anchor strides"),
        center_offset=num("center_offset", (*anchor, "center_offset"), d.center_offset),
        target_means=tuple(_number(x, "target_means") for x in r.get("target_means", (*coder, "target_means"),
                                                                      d.target_means)),
        target_stds=tuple(_number(x, "target_stds") for x in r.get("target_stds", (*coder, "target_stds"),
                                                                    d.target_stds)),
        nms_pre=int(num("nms_pre", (*test, "nms_pre"), d.nms_pre)),
        score_thr=num("score_thr", (*test, "score_thr"), d.score_thr),
        iou_threshold=num("iou_threshold", (*test, "nms", "iou_threshold"), d.iou_threshold),
        max_per_img=int(num("max_per_img", (*test, "max_per_img"), d.max_per_img)),
        min_bbox_size=num("min_bbox_size", (*test, "min_bbox_size"), d.min_bbox_size),
    )


def _pipeline(r: _Reader) -> PipelineSpec:
    """The test pipeline's resize scale, Normalize and Pad, found anywhere in ``data.test.pipeline``."""
    steps: list[Any] = list(_get(r.cfg, "data", "test", "pipeline") or [])
    found: dict[str, Any] = {}
    while steps:
        step = steps.pop(0)
        if not isinstance(step, Mapping):
            continue
        steps.extend(step.get("transforms") or [])
        kind = step.get("type")
        if kind in ("MultiScaleFlipAug", "Resize") and step.get("img_scale") is not None:
            found["img_scale"] = step["img_scale"]
        if kind == "Normalize":
            found.update(mean=step.get("mean"), std=step.get("std"))
        if kind == "Pad" and step.get("size_divisor") is not None:
            found["size_divisor"] = step["size_divisor"]
    d = PipelineSpec()
    for name in ("img_scale", "mean", "std", "size_divisor"):
        r.sources[f"pipeline.{name}"] = r.config_source if found.get(name) is not None else OFFICIAL
    scale = found.get("img_scale") or d.img_scale
    return PipelineSpec(_ints(scale, "img_scale")[:2] if len(scale) == 2 else d.img_scale,  # type: ignore[arg-type]
                        tuple(_number(x, "mean") for x in found.get("mean") or d.mean),
                        tuple(_number(x, "std") for x in found.get("std") or d.std),
                        int(_number(found.get("size_divisor") or d.size_divisor, "size_divisor")))


def recognize_detector(ckpt: Checkpoint, *, config_text: str | None = None,
                       config_source: str = "--det-config") -> DetectorSpec:
    """The :class:`DetectorSpec` of a detection checkpoint, its keys and shapes checked. ``config_text`` (from
    ``--det-config``) is used when given, else ``meta['config']``; with neither, the official values."""
    meta, sd = ckpt.meta, ckpt.state_dict
    if config_text is None and isinstance(meta.get("config"), str):
        config_text, config_source = meta["config"], "meta['config']"
    cfg = parse_config(config_text, source=config_source) if config_text is not None else {}
    r = _Reader(cfg, config_source if config_text is not None else OFFICIAL)
    kind = _kind(sd, _get(cfg, "model", "type"), ckpt.source)
    r.sources["kind"] = config_source if _get(cfg, "model", "type") else "state-dict keys"
    backbone = _backbone(sd, r, kind)
    neck = _neck(r, backbone, kind)
    head = _head(r, neck) if kind == RETINANET else None
    classes = meta.get("CLASSES")
    spec = DetectorSpec(kind, backbone, neck, head, _pipeline(r),
                        tuple(str(c) for c in classes) if isinstance(classes, (list, tuple)) else None,
                        str(meta["mmdet_version"]) if "mmdet_version" in meta else None, r.sources)
    if head is not None and head.num_classes != len(spec.classes or ()) and spec.classes is not None:
        raise ArchitectureError(f"{ckpt.source}: meta['CLASSES'] names {len(spec.classes)} classes but the head "
                                f"has {head.num_classes}.")
    check_detector_keys(sd, spec)
    return spec


def read_det_config(path: Path | None) -> str | None:
    """The text of ``--det-config`` (None: not given)."""
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--det-config {path}: cannot read it ({e}).") from None


def load_detector_spec(ckpt: Checkpoint, det_config: Path | None = None) -> DetectorSpec:
    """:func:`recognize_detector` with the config of ``--det-config`` when given."""
    return recognize_detector(ckpt, config_text=read_det_config(det_config),
                              config_source=f"--det-config {det_config}")


def describe_detector(ckpt: Checkpoint, *, det_config: Path | None = None) -> dict[str, Any]:
    """``vanilladeploy inspect`` of a detection checkpoint: source, detector (kind, backbone, neck, head,
    pipeline, classes) and where each setting came from."""
    spec = load_detector_spec(ckpt, det_config)
    info = spec.as_dict()
    sources = info.pop("sources")
    return {"source": {"path": ckpt.source, "sha256": ckpt.sha256, "form": "detector (mmdetection)",
                       "tensors": len(ckpt.state_dict), "mmdet_version": spec.mmdet_version,
                       "config": "meta['config']" if det_config is None and "config" in ckpt.meta else
                       (f"--det-config {det_config}" if det_config else "none: official values")},
            "detector": {"kind": spec.kind, "backbone": info["backbone"], "neck": info["neck"],
                         "head": info["head"] or "RPN + RoI heads: not supported yet (export --part neck)",
                         "pipeline": info["pipeline"],
                         "classes": len(spec.classes) if spec.classes else None},
            "sources": sources}


def detector_modules(spec: DetectorSpec, *, deploy: bool) -> dict[str, nn.Module]:
    """The modules by state-dict prefix: ``backbone`` (training or deploy form), ``neck`` and (RetinaNet)
    ``bbox_head``."""
    modules: dict[str, nn.Module] = {"backbone": spec.backbone.build(deploy=deploy), "neck": FPN(spec.neck)}
    if spec.head is not None:
        h = spec.head
        modules["bbox_head"] = RetinaHead(num_classes=h.num_classes, in_channels=spec.neck.out_channels,
                                          feat_channels=h.feat_channels, stacked_convs=h.stacked_convs,
                                          num_anchors=h.num_anchors)
    return modules


def check_detector_keys(state_dict: Mapping[str, Tensor], spec: DetectorSpec) -> None:
    """Every key the backbone, neck and (RetinaNet) head expect, with its shape; nothing else under their prefixes."""
    with torch.device("meta"):
        modules = detector_modules(spec, deploy=False)
    for prefix, module in modules.items():
        expected = {f"{prefix}.{k}": tuple(v.shape) for k, v in module.state_dict().items()}
        present = [k for k in state_dict if k.startswith(f"{prefix}.")]
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in present if k not in expected]
        wrong = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
        if missing:
            raise ArchitectureError(f"missing key {missing[0]!r} ({len(missing)} missing) for the {spec.kind} "
                                    f"{prefix} ({spec.backbone.variant} backbone).")
        if unexpected:
            raise ArchitectureError(f"unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected) in the "
                                    f"{spec.kind} {prefix}.")
        if wrong:
            k = wrong[0]
            raise ArchitectureError(f"tensor {k!r} has shape {list(state_dict[k].shape)}; the {prefix} described by "
                                    f"the config expects {list(expected[k])}.")


def load_detector_modules(state_dict: Mapping[str, Tensor], spec: DetectorSpec, *,
                          backbone_state: Mapping[str, Tensor] | None = None) -> dict[str, nn.Module]:
    """The training-form modules holding the checkpoint's weights (float32, strict, eval mode); with
    ``backbone_state`` (a deploy-form backbone state dict), the backbone in deploy form holding it."""
    with torch.device("meta"):
        modules = detector_modules(spec, deploy=backbone_state is not None)
    for prefix, module in modules.items():
        tensors = backbone_state if prefix == "backbone" and backbone_state is not None \
            else sub_state_dict(state_dict, prefix)
        module.load_state_dict({k: v if k.endswith("num_batches_tracked") else v.float()
                                for k, v in tensors.items()}, strict=True, assign=True)
        module.eval()
    return modules


__all__ = ["DetectorSpec", "MASK_RCNN", "PipelineSpec", "RETINANET", "check_detector_keys", "describe_detector",
           "detector_modules", "load_detector_modules", "load_detector_spec", "read_det_config", "recognize_detector"]
