"""benchmarks/zoo.py: model sets, published numbers (DESIGN §2), FLOPs and depth."""

from __future__ import annotations

import pytest

from vanilladeploy.benchmarks.zoo import PAPER_SET, PUBLISHED, get_entry, model_cost, resolve_models


def test_paper_set_and_train_form() -> None:
    assert [e.name for e in resolve_models("paper")] == list(PAPER_SET) and len(PAPER_SET) == 15
    names = [e.name for e in resolve_models("vanillanet_6,resnet50,vanillanet_6", train_form=True)]
    assert names == ["vanillanet_6", "resnet50", "vanillanet_6:train"]
    assert get_entry("vanillanet_6:train").published.top1 is None  # published numbers are for the deployed net
    with pytest.raises(ValueError, match="unknown model 'resnet51'.*resnet50"):
        resolve_models("resnet51")


def test_published_numbers() -> None:
    assert PUBLISHED["vanillanet_5"].pytorch_a100_ms == 1.61 and PUBLISHED["vanillanet_13"].trt_fp16_a100_ms == 0.67
    assert PUBLISHED["vanillanet_13_x1_5_ada_pool"].top1 == 83.11 and PUBLISHED["swin_t"].trt_fp32_a100_ms == 1.41
    assert PUBLISHED["resnet50"].trt_fp16_a100_ms == 0.54 and PUBLISHED["vanillanet_13_x1_5"].trt_fp32_a100_ms is None


@pytest.mark.parametrize("name,gmacs,depth", [("vanillanet_6", 5.99, 6), ("resnet50", 4.1, 50), ("swin_t", 4.5, 53)])
def test_cost_matches_published_gmacs(name: str, gmacs: float, depth: int) -> None:
    cost = model_cost(get_entry(name).build(), batch=1, img_size=224)
    assert cost.flops / 2e9 == pytest.approx(gmacs, rel=0.04) and cost.depth == depth
    assert cost.weight_bytes("fp16") * 2 == cost.weight_bytes("fp32") == 4 * cost.params
