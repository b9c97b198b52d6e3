"""vanilladeploy/reparam.py: each fold alone against torch modules, then whole networks, every variant.

Tolerances: a single fold/merge against the float32 module pair: rel L2 ≤ 1e-6; whole training form (λ = 1)
against the fused deploy form: rel L2 ≤ 1e-5 (DESIGN §5). BN statistics are always randomized.
"""

import pytest
import torch
from conftest import ALL_VARIANTS, SMALL_IMG, random_model
from torch import nn

from vanilladeploy.models.vanillanet import BN_EPS, create_vanillanet
from vanilladeploy.reparam import BatchNormStats, fuse_conv_bn, merge_1x1, reparameterize_state_dict, to_float32
from vanilladeploy.verify import compare

torch.manual_seed(0)


def _random_bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=BN_EPS).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.1, 3.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.5)
    return bn


def _stats(bn: nn.BatchNorm2d) -> BatchNormStats:
    return BatchNormStats.from_state_dict({f"bn.{k}": v for k, v in bn.state_dict().items()}, "bn")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return compare(a.detach().numpy(), b.detach().numpy(), tolerance=1e-6).rel_l2


def _conv_from(weight: torch.Tensor, bias: torch.Tensor, **kw) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1] * kw.get("groups", 1), weight.shape[0], weight.shape[2:], **kw)
    conv.weight.data, conv.bias.data = to_float32(weight), to_float32(bias)
    return conv.eval()


def test_fuse_conv_bn_matches_conv_then_bn() -> None:
    conv, bn = nn.Conv2d(8, 16, 3, padding=1).eval(), _random_bn(16)
    w, b = fuse_conv_bn(conv.weight, conv.bias, _stats(bn))
    x = torch.randn(2, 8, 9, 9)
    assert _rel(_conv_from(w, b, padding=1)(x), bn(conv(x))) < 1e-6
    assert w.dtype == torch.float64


def test_fuse_depthwise_act_conv_without_bias() -> None:
    weight, bn = torch.randn(8, 1, 7, 7) * 0.2, _random_bn(8)
    w, b = fuse_conv_bn(weight, None, _stats(bn))
    x = torch.randn(2, 8, 10, 10)
    reference = bn(nn.functional.conv2d(x, weight, padding=3, groups=8))
    assert _rel(_conv_from(w, b, padding=3, groups=8)(x), reference) < 1e-6
    assert b.abs().sum() > 0  # the BN really contributes a bias


@pytest.mark.parametrize("kernel,stride,padding", [(1, 1, 0), (4, 4, 0), (4, 3, 1)])
def test_merge_conv_with_following_1x1(kernel: int, stride: int, padding: int) -> None:
    first = nn.Conv2d(3, 12, kernel, stride=stride, padding=padding).eval()
    second = nn.Conv2d(12, 6, 1).eval()
    with torch.no_grad():
        first.bias.normal_()
        second.bias.normal_()
    w, b = merge_1x1((first.weight, first.bias), (second.weight, second.bias))
    x = torch.randn(2, 3, 16, 16)
    merged = _conv_from(w, b, stride=stride, padding=padding)
    assert _rel(merged(x), second(first(x))) < 1e-6


def test_to_float32_gives_fresh_strides_even_for_size_one_dims() -> None:
    w = torch.randn(16, 8, dtype=torch.float64).t()[:, :, None, None]  # strides (1, 8, ...) and is_contiguous()
    fresh = to_float32(w)
    assert fresh.dtype == torch.float32 and torch.equal(fresh.double(), w.float().double())
    assert fresh.stride() == torch.empty(w.shape).stride() == (16, 1, 1, 1)


def test_deploy_weights_have_standard_strides_and_dtype() -> None:
    fused = reparameterize_state_dict(random_model("vanillanet_5").state_dict())
    for key, t in fused.state_dict.items():
        assert t.dtype == torch.float32, key
        assert t.stride() == torch.empty(t.shape).stride(), key


def test_certificates_cover_every_merge() -> None:
    fused = reparameterize_state_dict(random_model("vanillanet_6").state_dict())
    assert [c.layer for c in fused.certificates] == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "cls"]
    for cert in fused.certificates:
        assert 0 < cert.rel_l2 < 1e-7  # only float32 rounding separates stored weights from the float64 merge


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_train_and_deploy_forms_agree_for_every_variant(variant: str) -> None:
    train = random_model(variant, seed=3)
    fused = reparameterize_state_dict(train.state_dict())
    with torch.device("meta"):
        deploy = create_vanillanet(variant, deploy=True, num_classes=10)
    deploy.load_state_dict(fused.state_dict, strict=True, assign=True)
    x = torch.randn(2, 3, SMALL_IMG, SMALL_IMG, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref, out = train(x), deploy.eval()(x)
    result = compare(out.numpy(), ref.numpy(), tolerance=1e-5)
    assert result, f"{variant}: rel L2 {result.rel_l2:.2e}"
    assert ref.abs().max() > 1e-3  # the comparison is not between two near-zero outputs


def test_fused_model_differs_from_a_network_trained_with_lambda_below_one() -> None:
    train = random_model("vanillanet_5", seed=4)
    fused = reparameterize_state_dict(train.state_dict())
    deploy = create_vanillanet("vanillanet_5", deploy=True, num_classes=10).eval()
    deploy.load_state_dict(fused.state_dict)
    train.set_lambda(0.5)
    x = torch.randn(1, 3, SMALL_IMG, SMALL_IMG)
    with torch.no_grad():
        assert not compare(deploy(x).numpy(), train(x).numpy(), tolerance=1e-5)
