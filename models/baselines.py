"""Baseline networks for latency comparisons: ResNet-18 … 152 and Swin-T/S/B from torchvision, randomly initialized
(no downloads). torchvision is optional and imported here, when a baseline is asked for."""

from __future__ import annotations

from torch import nn

BASELINES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "swin_t", "swin_s", "swin_b")


def create_baseline(name: str, *, num_classes: int = 1000) -> nn.Module:
    """A torchvision classifier with random weights, in eval mode. Raises ValueError for an unknown name and
    ImportError (naming the extra) without torchvision."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    try:
        import torchvision.models
    except ImportError:
        raise ImportError("the ResNet/Swin baselines need torchvision: pip install 'vanilladeploy[bench]'") from None
    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes).eval()


def main_path_depth(model: nn.Module) -> int:
    """Weight layers along the main path: dense (non-depthwise) convolutions and linear layers, not counting
    ResNet's 1x1 shortcut projections. ResNet-N gives N, a deployed VanillaNet-N gives N."""
    depth = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups == 1 and ".downsample" not in f".{name}":
            depth += 1
        elif isinstance(module, nn.Linear):
            depth += 1
    return depth
