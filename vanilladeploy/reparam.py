"""Re-parameterization of VanillaNet as pure functions: training-form state dict in, deploy-form state dict out.

Every transform computes in float64 and the result is stored as float32 with the strides of a freshly allocated
tensor. (Merging 1x1 convs through transposes gives weights with strides such as (64, 1, 64, 64): ``is_contiguous()``
still says True because the trailing dims have size 1, but torch then treats them as channels-last and the deployed
model runs slower.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vanilladeploy.models.vanillanet import BN_EPS

Pair = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class BatchNormStats:
    """A BatchNorm's affine parameters and running statistics, in float64."""

    mean: Tensor
    var: Tensor
    gamma: Tensor
    beta: Tensor
    eps: float = BN_EPS

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor], prefix: str, eps: float = BN_EPS) -> BatchNormStats:
        get = lambda name: state_dict[f"{prefix}.{name}"].to(torch.float64)  # noqa: E731
        return cls(get("running_mean"), get("running_var"), get("weight"), get("bias"), eps)


@torch.no_grad()
def fuse_conv_bn(weight: Tensor, bias: Tensor | None, bn: BatchNormStats) -> Pair:
    """Fold ``BN(conv(x))`` into one conv, with σ = sqrt(var + eps):

    W' = W·γ/σ (per output channel), b' = (b − μ)·γ/σ + β; ``bias=None`` means b = 0 (the depthwise act conv).
    """
    weight = weight.to(torch.float64, copy=True)  # scaled in place: one float64 copy of the weight, not two
    bias = torch.zeros_like(bn.mean) if bias is None else bias.to(torch.float64)
    scale = bn.gamma / torch.sqrt(bn.var + bn.eps)
    return weight.mul_(scale.reshape(-1, *([1] * (weight.dim() - 1)))), (bias - bn.mean) * scale + bn.beta


@torch.no_grad()
def merge_1x1(first: Pair, second: Pair) -> Pair:
    """Merge ``conv_2(conv_1(x))`` where conv_2 is 1x1 and nothing non-linear sits between (λ = 1):

    W[o, i, h, w] = Σ_m W2[o, m]·W1[m, i, h, w],  b = W2·b1 + b2.  conv_1 may have any kernel (the 4x4 stem).
    """
    (w1, b1), (w2, b2) = first, second
    w2 = w2.to(torch.float64).flatten(1)
    return torch.einsum("om,mihw->oihw", w2, w1.to(torch.float64)), w2 @ b1.to(torch.float64) + b2.to(torch.float64)


@torch.no_grad()
def fold_pixel_normalization(state_dict: Mapping[str, Tensor], mean: Sequence[float], std: Sequence[float], *,
                             key: str = "stem.0", fold_mean: bool = True) -> dict[str, Tensor]:
    """Fold the input normalization x = (p/255 − m)/s into the first conv ``key``, so that it takes pixels p
    (0–255) directly. Exact for a conv WITHOUT padding (every window reads real pixels):

    conv(W, (p/255 − m)/s) + b = conv(W', p) + b' with
    W'[o, c] = W[o, c] / (255·s_c),  b'[o] = b[o] − Σ_{c,kh,kw} W[o, c, kh, kw]·m_c/s_c.

    A conv that zero-pads reads a padded zero as x = 0, i.e. the pixel 255·m, so its mean cannot be folded: with
    ``fold_mean=False`` only the scale is, conv(W, q/(255·s)) + b = conv(W', q) + b with q = p − 255·m (exact with
    padding too: a zero stays zero when scaled), and the caller subtracts 255·m before the conv.

    A deploy-form state dict in, a new one out: ``key``'s weight and bias folded (float64, stored as float32 with
    standard strides), every other tensor the same object.
    """
    weight, bias = state_dict[f"{key}.weight"].to(torch.float64), state_dict[f"{key}.bias"].to(torch.float64)
    m = torch.tensor(mean, dtype=torch.float64).reshape(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).reshape(1, -1, 1, 1)
    if m.numel() != weight.shape[1] or s.numel() != weight.shape[1]:
        raise ValueError(f"mean/std have {m.numel()}/{s.numel()} channels; {key} takes {weight.shape[1]}")
    if fold_mean:
        bias = bias - (weight * (m / s)).sum(dim=(1, 2, 3))
    folded = {f"{key}.weight": weight / (255.0 * s), f"{key}.bias": bias}
    return {**state_dict, **{k: to_float32(v) for k, v in folded.items()}}


def to_float32(t: Tensor) -> Tensor:
    """``t`` as float32 in a freshly allocated tensor, so its strides are the standard row-major ones."""
    out = torch.empty(t.shape, dtype=torch.float32)
    out.copy_(t)
    return out


@dataclass(frozen=True)
class LayerCertificate:
    """How far the stored float32 deploy tensors of one layer are from their float64 values."""

    layer: str
    max_abs: float
    rel_l2: float

    def as_dict(self) -> dict[str, float | str]:
        return {"layer": self.layer, "max_abs": self.max_abs, "rel_l2": self.rel_l2}


@dataclass(frozen=True)
class ReparamResult:
    """The deploy-form state dict and one certificate per merged layer (stem, each stage, classifier)."""

    state_dict: dict[str, Tensor]
    certificates: list[LayerCertificate]


def _certify(layer: str, tensors64: dict[str, Tensor], out: dict[str, Tensor]) -> LayerCertificate:
    stored = {k: to_float32(v) for k, v in tensors64.items()}
    out.update(stored)
    # stored − float64 value of every tensor, written into one flat vector (no per-tensor temporaries)
    diff, start = torch.empty(sum(v.numel() for v in tensors64.values()), dtype=torch.float64), 0
    for k, v in tensors64.items():
        diff[start:start + v.numel()].view(v.shape).copy_(stored[k]).sub_(v)
        start += v.numel()
    ref = torch.cat([v.flatten() for v in tensors64.values()])
    rel_l2 = (diff.norm() / ref.norm().clamp_min(1e-300)).item()
    return LayerCertificate(layer, diff.abs_().max().item(), rel_l2)


def _act(sd: Mapping[str, Tensor], prefix: str) -> Pair:
    return fuse_conv_bn(sd[f"{prefix}.weight"], None, BatchNormStats.from_state_dict(sd, f"{prefix}.bn"))


def _conv_bn(sd: Mapping[str, Tensor], prefix: str) -> Pair:
    bn = BatchNormStats.from_state_dict(sd, f"{prefix}.1")
    return fuse_conv_bn(sd[f"{prefix}.0.weight"], sd[f"{prefix}.0.bias"], bn)


def reparameterize_backbone(state_dict: Mapping[str, Tensor]) -> ReparamResult:
    """The stem and stages of a training-form state dict → deploy form (official key names), certified per layer:

    stem:  conv4x4+BN ∘ conv1x1+BN → ``stem.0``;  act conv+BN → ``stem.1``
    stage: conv1x1+BN ∘ conv1x1+BN → ``stages.i.conv``;  act conv+BN → ``stages.i.act``
    Keys of anything else (a classifier head) are ignored. The detection backbone has nothing between a stage's two
    convs, so this is exact for it; the classifier's training form has LeakyReLU(λ) there (exact only for λ = 1).
    """
    sd, out, certs = state_dict, {}, []
    n_stages = len({k.split(".")[1] for k in sd if k.startswith("stages.")})

    w, b = merge_1x1(_conv_bn(sd, "stem1"), _conv_bn(sd, "stem2"))
    aw, ab = _act(sd, "stem2.2")
    certs.append(_certify("stem", {"stem.0.weight": w, "stem.0.bias": b, "stem.1.weight": aw, "stem.1.bias": ab},
                          out))
    for i in range(n_stages):
        p = f"stages.{i}"
        w, b = merge_1x1(_conv_bn(sd, f"{p}.conv1"), _conv_bn(sd, f"{p}.conv2"))
        aw, ab = _act(sd, f"{p}.act")
        certs.append(_certify(p, {f"{p}.conv.weight": w, f"{p}.conv.bias": b, f"{p}.act.weight": aw,
                                  f"{p}.act.bias": ab}, out))
    return ReparamResult(out, certs)


def reparameterize_state_dict(state_dict: Mapping[str, Tensor]) -> ReparamResult:
    """Training-form state dict (official key names) → deploy-form state dict (official key names).

    stem and stages as :func:`reparameterize_backbone`;  head: conv1x1+BN ∘ conv1x1 → ``cls.2``
    Exact only for λ = 1; callers check the schedule (``vanilladeploy.checkpoint.lambda_of``).
    """
    sd = state_dict
    fused = reparameterize_backbone(sd)
    head = fuse_conv_bn(sd["cls1.2.weight"], sd["cls1.2.bias"], BatchNormStats.from_state_dict(sd, "cls1.3"))
    w, b = merge_1x1(head, (sd["cls2.0.weight"], sd["cls2.0.bias"]))
    fused.certificates.append(_certify("cls", {"cls.2.weight": w, "cls.2.bias": b}, fused.state_dict))
    return fused
