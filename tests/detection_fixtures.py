"""Detection checkpoints as the official repository writes them (mmdetection 2.x), at reduced widths, with seeded
random weights and randomized BatchNorm statistics."""

from __future__ import annotations

from pathlib import Path

import torch

from vanilladeploy.detector import MASK_RCNN, OFFICIAL_OUT_INDICES, OFFICIAL_STRIDES, RETINANET
from vanilladeploy.models.detection import FPN, FPNSpec, RetinaHead, VanillaNetBackbone
from vanilladeploy.models.vanillanet import VARIANTS, randomize_

COCO_CLASSES = tuple(f"class_{i}" for i in range(80))
FULL_DIMS = VARIANTS["vanillanet_13"].dims


def small_dims(divisor: int = 8) -> tuple[int, ...]:
    """VanillaNet-13's widths divided by ``divisor`` (the official structure, seconds instead of minutes)."""
    return tuple(d // divisor for d in FULL_DIMS)


def config_text(kind: str, dims: tuple[int, ...], *, out_indices=None, strides=OFFICIAL_STRIDES, neck_out: int = 32,
                feat: int = 32, extra: str = "") -> str:
    """A config as mmcv's ``Config.pretty_text`` dumps it into ``meta['config']`` (merged, plain data)."""
    out_indices = list(out_indices or OFFICIAL_OUT_INDICES[kind])
    in_channels = [dims[min(i + 1, len(dims) - 1)] for i in out_indices]
    head = (f"""    bbox_head=dict(
        type='RetinaHead', num_classes=80, in_channels={neck_out}, stacked_convs=4, feat_channels={feat},
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
                              ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0],
                        target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                                 ignore_iof_thr=-1), allowed_border=-1, pos_weight=-1, debug=False),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
                  max_per_img=100)""" if kind == RETINANET else """\
    rpn_head=dict(type='RPNHead', in_channels=256, feat_channels=256),
    roi_head=dict(type='StandardRoIHead')""")
    return f"""checkpoint_file = '/your_path_to/vanillanet_13_act_num_4_kd_pretrain.pth'
model = dict(
    type='{kind}',
    backbone=dict(
        type='Vanillanet', act_num=4, dims={list(dims)}, out_indices={out_indices}, strides={list(strides)},
        init_cfg=dict(type='Pretrained', checkpoint='/your_path_to/vanillanet_13_act_num_4_kd_pretrain.pth')),
    neck=dict(type='FPN', in_channels={in_channels}, out_channels={neck_out}, start_level=0,
              {"add_extra_convs='on_input', " if kind == RETINANET else ""}num_outs=5),
{head})
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
data = dict(
    samples_per_gpu=4,
    test=dict(type='CocoDataset', ann_file='data/coco/annotations/instances_val2017.json',
              pipeline=[dict(type='LoadImageFromFile'),
                        dict(type='MultiScaleFlipAug', img_scale=(1333, 800), flip=False,
                             transforms=[dict(type='Resize', keep_ratio=True), dict(type='RandomFlip'),
                                         dict(type='Normalize', mean=[123.675, 116.28, 103.53],
                                              std=[58.395, 57.12, 57.375], to_rgb=True),
                                         dict(type='Pad', size_divisor=32),
                                         dict(type='ImageToTensor', keys=['img']),
                                         dict(type='Collect', keys=['img'])])]))
optimizer = dict(type='AdamW', lr=8e-05, betas=(0.9, 0.999), weight_decay=0.05,
                 paramwise_cfg={{'decay_rate': 0.6, 'decay_type': 'layer_wise', 'num_layers': 6}})
lr_config = dict(policy='step', warmup='linear', warmup_iters=500, warmup_ratio=0.001, step=[10, 11])
runner = dict(type='EpochBasedRunner', max_epochs=12)
{extra}"""


@torch.no_grad()
def _unit_scale_(model: torch.nn.Module, layers: list[tuple[torch.nn.Module, list[torch.Tensor]]], x) -> None:
    """Scale each layer's last affine parameters so its output has unit std on ``x``, in order (random weights
    otherwise grow activations ~10× per layer, and a random head then scores everything 0 or 1)."""
    for module, params in layers:
        seen = []
        handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
        model(x)
        handle.remove()
        std = float(seen[0].std())
        for p in params:
            p.div_(std)


def detector_state_dict(kind: str, dims: tuple[int, ...], *, seed: int = 0, neck_out: int = 32, feat: int = 32,
                        out_indices=None, strides=OFFICIAL_STRIDES) -> dict[str, torch.Tensor]:
    """backbone.* (training form), neck.* and (RetinaNet) bbox_head.* with random weights and BN statistics; for
    Mask R-CNN a few rpn_head.*/roi_head.* tensors stand for its heads."""
    out_indices = tuple(out_indices or OFFICIAL_OUT_INDICES[kind])
    backbone = randomize_(VanillaNetBackbone(dims, tuple(strides), out_indices, act_num=4), seed=seed).eval()
    extra = "on_input" if kind == RETINANET else False  # the official configs' (Mask R-CNN: mmdet's FPN default)
    neck = randomize_(FPN(FPNSpec(tuple(dims[i + 1] for i in out_indices), neck_out, add_extra_convs=extra)),
                      seed=seed + 1).eval()
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(seed))
    acts = [backbone.stem2[2].bn] + [stage.act.bn for stage in backbone.stages]
    _unit_scale_(backbone, [(bn, [bn.weight, bn.bias]) for bn in acts], x)
    with torch.no_grad():
        feats = backbone(x)
    _unit_scale_(neck, [(c.conv, [c.conv.weight, c.conv.bias]) for c in neck.fpn_convs], feats)
    sd = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    sd.update({f"neck.{k}": v for k, v in neck.state_dict().items()})
    if kind == RETINANET:
        head = randomize_(RetinaHead(num_classes=80, in_channels=neck_out, feat_channels=feat, stacked_convs=4,
                                     num_anchors=9), seed=seed + 2)
        with torch.no_grad():
            head.retina_cls.weight.mul_(0.4)  # logits ~ N(-3, 0.7): scores spread around the 0.05 threshold and
            head.retina_cls.bias.add_(-3.0)  # far from 1.0, where float32 sigmoids tie, as a trained head's do
            head.retina_reg.weight.mul_(0.3)
        sd.update({f"bbox_head.{k}": v for k, v in head.state_dict().items()})
    else:
        g = torch.Generator().manual_seed(seed)
        sd["rpn_head.rpn_conv.weight"] = torch.randn(256, 256, 3, 3, generator=g)
        sd["roi_head.bbox_head.fc_cls.weight"] = torch.randn(81, 1024, generator=g)
    return sd


def save_detector(path: Path, kind: str = RETINANET, *, divisor: int = 8, meta: bool = True, seed: int = 0,
                  neck_out: int = 32, feat: int = 32, **config) -> Path:
    """An mmdetection 2.x checkpoint file: meta (config text, CLASSES, mmdet_version …), state_dict, optimizer.
    ``divisor=1, neck_out=256, feat=256``: the official RetinaNet's shapes."""
    dims = small_dims(divisor)
    config.update(neck_out=neck_out, feat=feat)
    ckpt = {"state_dict": detector_state_dict(kind, dims, seed=seed, neck_out=neck_out, feat=feat),
            "optimizer": {"state": {}, "param_groups": [{"lr": 8e-5, "params": [0, 1]}]}}
    if meta:
        ckpt["meta"] = {"config": config_text(kind, dims, **config), "CLASSES": COCO_CLASSES,
                        "mmdet_version": "2.25.3", "env_info": "sys.platform: linux", "epoch": 12, "iter": 88000,
                        "seed": 0, "exp_name": f"{kind.lower()}_vanillanet_13_mstrain_480-1024_adamw.py"}
    torch.save(ckpt, path)
    return path


__all__ = ["COCO_CLASSES", "MASK_RCNN", "RETINANET", "config_text", "detector_state_dict", "save_detector",
           "small_dims"]
