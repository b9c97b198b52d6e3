"""VanillaNet (Chen et al., NeurIPS 2023) in training form and deploy form.

Parameter names follow the official implementation exactly, so its checkpoints load 1:1:

- training form: ``stem1.{0,1}``, ``stem2.{0,1,2}``, ``stages.i.conv1.{0,1}``, ``stages.i.conv2.{0,1}``,
  ``stages.i.act.{weight,bn}``, ``cls1.{2,3}``, ``cls2.0``;
- deploy form: ``stem.{0,1}``, ``stages.i.conv``, ``stages.i.act.{weight,bias}``, ``cls.2``.

This module defines the networks only; turning one form into the other is ``vanilladeploy.reparam``'s job.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-6
"""The BatchNorm eps used everywhere in VanillaNet (state dicts do not store it)."""


@dataclass(frozen=True)
class VariantSpec:
    """One row of the variant table: channel widths, per-stage strides and (ada variant) pool sizes."""

    name: str
    dims: tuple[int, ...]
    strides: tuple[int, ...]
    ada_pool: tuple[int, ...] | None = None

    @property
    def depth(self) -> int:
        """N of VanillaNet-N: the number of weight layers of the deployed net (stem + stages + classifier)."""
        return len(self.strides) + 2

    @property
    def stem_stride_padding(self) -> tuple[int, int]:
        return (3, 1) if self.ada_pool else (4, 0)


def _spec(name: str, widths: list[int], strides: list[int], scale: int = 4, ada_pool=None) -> VariantSpec:
    return VariantSpec(name, tuple(w * scale for w in widths), tuple(strides), ada_pool)


_W13 = [128, 128, 256] + [512] * 7 + [1024, 1024]
_S13 = [1, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1]
VARIANTS: dict[str, VariantSpec] = {
    s.name: s
    for s in (
        _spec("vanillanet_5", [128, 256, 512, 1024], [2, 2, 2]),
        _spec("vanillanet_6", [128, 256, 512, 1024, 1024], [2, 2, 2, 1]),
        _spec("vanillanet_7", [128, 128, 256, 512, 1024, 1024], [1, 2, 2, 2, 1]),
        _spec("vanillanet_8", [128, 128, 256, 512, 512, 1024, 1024], [1, 2, 2, 1, 2, 1]),
        _spec("vanillanet_9", [128, 128, 256] + [512] * 3 + [1024, 1024], [1, 2, 2, 1, 1, 2, 1]),
        _spec("vanillanet_10", [128, 128, 256] + [512] * 4 + [1024, 1024], [1, 2, 2, 1, 1, 1, 2, 1]),
        _spec("vanillanet_11", [128, 128, 256] + [512] * 5 + [1024, 1024], [1, 2, 2, 1, 1, 1, 1, 2, 1]),
        _spec("vanillanet_12", [128, 128, 256] + [512] * 6 + [1024, 1024], [1, 2, 2, 1, 1, 1, 1, 1, 2, 1]),
        _spec("vanillanet_13", _W13, _S13),
        _spec("vanillanet_13_x1_5", _W13, _S13, scale=6),
        # The released code and weights pool to 38/19/10 (the supplement's text says 40/20/10).
        _spec("vanillanet_13_x1_5_ada_pool", _W13, _S13, scale=6, ada_pool=(0, 38, 19, 0, 0, 0, 0, 0, 0, 10, 0)),
    )
}


def get_variant(name: str) -> VariantSpec:
    """The spec of a variant by name; a ValueError suggests the closest names for a typo."""
    if name in VARIANTS:
        return VARIANTS[name]
    close = difflib.get_close_matches(name, list(VARIANTS), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else f" Known: {', '.join(VARIANTS)}."
    raise ValueError(f"unknown VanillaNet variant {name!r}.{hint}")


class SeriesActivation(nn.Module):
    """ReLU, then a depthwise (2n+1)x(2n+1) conv (padding n); a BatchNorm follows in training form.

    Training form: ``weight`` (no conv bias) and ``bn``; deploy form: ``weight`` and ``bias`` (the BN folded in).
    """

    def __init__(self, dim: int, act_num: int = 3, *, deploy: bool = False) -> None:
        super().__init__()
        if act_num < 0:
            raise ValueError(f"act_num must be >= 0, got {act_num}")
        self.dim, self.act_num, self.deploy = dim, act_num, deploy
        self.weight = nn.Parameter(torch.empty(dim, 1, 2 * act_num + 1, 2 * act_num + 1))
        nn.init.trunc_normal_(self.weight, std=0.02)
        if deploy:
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.bias = None
            self.bn = nn.BatchNorm2d(dim, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(F.relu(x), self.weight, self.bias, padding=self.act_num, groups=self.dim)
        return x if self.deploy else self.bn(x)


def _conv_bn(dim_in: int, dim_out: int, kernel_size: int = 1, stride: int = 1, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim_in, dim_out, kernel_size, stride=stride, padding=padding),
        nn.BatchNorm2d(dim_out, eps=BN_EPS),
    )


class Block(nn.Module):
    """One stage: 1x1 conv (training: conv1x1→BN→LeakyReLU(λ)→conv1x1→BN) → pool → series activation."""

    def __init__(
        self, dim: int, dim_out: int, *, act_num: int = 3, stride: int = 1, ada_pool: int = 0, deploy: bool = False
    ) -> None:
        super().__init__()
        self.deploy = deploy
        self.act_learn = 1.0
        if deploy:
            self.conv = nn.Conv2d(dim, dim_out, kernel_size=1)
        else:
            self.conv1 = _conv_bn(dim, dim)
            self.conv2 = _conv_bn(dim, dim_out)
        if stride == 1:
            self.pool: nn.Module = nn.Identity()
        elif ada_pool:
            self.pool = nn.AdaptiveMaxPool2d((ada_pool, ada_pool))
        else:
            self.pool = nn.MaxPool2d(stride)
        self.act = SeriesActivation(dim_out, act_num, deploy=deploy)

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            x = self.conv(x)
        else:
            x = self.conv2(F.leaky_relu(self.conv1(x), self.act_learn))
        return self.act(self.pool(x))


class VanillaNet(nn.Module):
    """VanillaNet-N: stem, ``len(strides)`` stages and a classifier; ``deploy`` picks the form.

    ``act_learn`` is λ of the deep-training schedule: LeakyReLU(λ) = (1-λ)·ReLU(x) + λ·x. Only at λ = 1 are the
    two 1x1 convs of a layer linear in sequence, which is what makes the deploy form exact.
    """

    def __init__(
        self,
        dims: tuple[int, ...],
        strides: tuple[int, ...],
        *,
        ada_pool: tuple[int, ...] | None = None,
        num_classes: int = 1000,
        act_num: int = 3,
        drop_rate: float = 0.0,
        in_chans: int = 3,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        if len(dims) != len(strides) + 1:
            raise ValueError(f"need len(dims) == len(strides) + 1, got {len(dims)} and {len(strides)}")
        self.deploy = deploy
        self.act_learn = 1.0
        stride, padding = (3, 1) if ada_pool else (4, 0)
        if deploy:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, dims[0], 4, stride=stride, padding=padding),
                SeriesActivation(dims[0], act_num, deploy=True),
            )
        else:
            self.stem1 = _conv_bn(in_chans, dims[0], 4, stride=stride, padding=padding)
            self.stem2 = nn.Sequential(*_conv_bn(dims[0], dims[0]), SeriesActivation(dims[0], act_num))
        self.stages = nn.ModuleList(
            Block(dims[i], dims[i + 1], act_num=act_num, stride=s, ada_pool=ada_pool[i] if ada_pool else 0,
                  deploy=deploy)
            for i, s in enumerate(strides)
        )
        head = [nn.AdaptiveAvgPool2d(1), nn.Dropout(drop_rate), nn.Conv2d(dims[-1], num_classes, 1)]
        if deploy:
            self.cls = nn.Sequential(*head)
        else:
            self.cls1 = nn.Sequential(*head, nn.BatchNorm2d(num_classes, eps=BN_EPS))
            self.cls2 = nn.Sequential(nn.Conv2d(num_classes, num_classes, 1))

    def set_lambda(self, value: float) -> None:
        """Set λ (``act_learn``) of the stem, every stage and the classifier."""
        self.act_learn = float(value)
        for stage in self.stages:
            stage.act_learn = float(value)

    def forward_layers(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """Yield ``(layer name, output)`` after the stem, each stage and the classifier, in order."""
        if self.deploy:
            x = self.stem(x)
        else:
            x = self.stem2(F.leaky_relu(self.stem1(x), self.act_learn))
        yield "stem", x
        for i, stage in enumerate(self.stages):
            x = stage(x)
            yield f"stages.{i}", x
        if self.deploy:
            x = self.cls(x)
        else:
            x = self.cls2(F.leaky_relu(self.cls1(x), self.act_learn))
        yield "cls", torch.flatten(x, 1)

    def forward(self, x: Tensor) -> Tensor:
        for _, x in self.forward_layers(x):
            pass
        return x


def create_vanillanet(
    name: str, *, deploy: bool = False, num_classes: int = 1000, act_num: int = 3, drop_rate: float = 0.0
) -> VanillaNet:
    """Build a variant by name (``vanillanet_5`` … ``vanillanet_13_x1_5_ada_pool``) in either form."""
    spec = get_variant(name)
    return VanillaNet(spec.dims, spec.strides, ada_pool=spec.ada_pool, num_classes=num_classes, act_num=act_num,
                      drop_rate=drop_rate, deploy=deploy)


@torch.no_grad()
def randomize_(model: VanillaNet, *, seed: int = 0) -> VanillaNet:
    """Give every weight a seeded random value and every BatchNorm random statistics (in place).

    Conv weights are scaled by 1/sqrt(fan_in) so activations stay O(1) through the depth; BN gets
    mean ~ N(0, 0.1), var ~ U(0.5, 2), gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1) and conv biases ~ N(0, 0.1),
    so folding a BN into a conv is never the identity.
    """
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, SeriesActivation)):
            fan_in = module.weight[0].numel()  # drawn in place: no temporary as large as the weight
            module.weight.normal_(generator=g).mul_(math.sqrt(2.0 / fan_in))  # as randn: same stream
            if module.bias is not None:
                module.bias.normal_(generator=g).mul_(0.1)
        elif isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            module.weight.copy_(torch.rand(c, generator=g) + 0.5)
            module.bias.copy_(torch.randn(c, generator=g) * 0.1)
            module.num_batches_tracked.zero_()
    return model
