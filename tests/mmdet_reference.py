"""mmdetection's own modules as the test reference for the detector (neck, head, anchors, decoding, NMS).

``pip install mmdet==3.3.0 mmcv-lite==2.1.0 mmengine==0.10.7`` runs mmdet's pure-torch modules on CPU; only
``mmcv.ops`` (mmcv's compiled operators, absent from mmcv-lite) is missing. An import hook supplies it: ``batched_nms``
is ``torchvision.ops.batched_nms`` (mmcv's own returns the same boxes for ``class_agnostic=False``: both are per-class
greedy NMS by IoU > threshold), and every other compiled op is a placeholder class that raises if it is ever built
(RetinaNet and FPN build none).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


def _batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False):
    import torch
    import torchvision

    if class_agnostic:
        idxs = torch.zeros_like(idxs)
    keep = torchvision.ops.batched_nms(boxes, scores, idxs, float(nms_cfg["iou_threshold"]))
    max_num = nms_cfg.get("max_num", -1) if isinstance(nms_cfg, dict) else -1
    if max_num > 0:
        keep = keep[:max_num]
    return torch.cat([boxes[keep], scores[keep, None]], dim=1), keep


class _CompiledOp:
    """Stands for an mmcv compiled operator that mmcv-lite lacks."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__}: mmcv's compiled operators are not installed (mmcv-lite)")


def _module_getattr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (_CompiledOp,), {})


class _OpsFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "mmcv.ops" or fullname.startswith("mmcv.ops."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.batched_nms = _batched_nms
        module.__getattr__ = _module_getattr
        return module

    def exec_module(self, module):
        pass


def install() -> None:
    """Supply ``mmcv.ops`` (idempotent); call before importing mmdet."""
    if not any(isinstance(f, _OpsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _OpsFinder())
