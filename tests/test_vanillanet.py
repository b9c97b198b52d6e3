"""models/vanillanet.py: the variant table, the official key schema and both forms' behaviour."""

import pytest
import torch
from conftest import SMALL_IMG, random_model

from vanilladeploy.models.vanillanet import VARIANTS, create_vanillanet, get_variant

# DESIGN §2: deploy parameters in millions (1000 classes) and the depth N of VanillaNet-N.
DEPLOY_PARAMS_M = {"vanillanet_5": 15.5, "vanillanet_6": 32.5, "vanillanet_7": 32.8, "vanillanet_8": 37.1,
                   "vanillanet_9": 41.4, "vanillanet_10": 45.7, "vanillanet_11": 50.0, "vanillanet_12": 54.3,
                   "vanillanet_13": 58.6, "vanillanet_13_x1_5": 127.8, "vanillanet_13_x1_5_ada_pool": 127.8}
TRAIN_PARAMS_M = {"vanillanet_5": 22.3, "vanillanet_13": 107.7}


def _params_m(name: str, deploy: bool) -> float:
    with torch.device("meta"):
        model = create_vanillanet(name, deploy=deploy)
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 1)


@pytest.mark.parametrize("name", list(DEPLOY_PARAMS_M))
def test_deploy_parameter_count_matches_published_table(name: str) -> None:
    assert _params_m(name, deploy=True) == DEPLOY_PARAMS_M[name]


@pytest.mark.parametrize("name", list(TRAIN_PARAMS_M))
def test_train_parameter_count_matches_published_table(name: str) -> None:
    assert _params_m(name, deploy=False) == TRAIN_PARAMS_M[name]


def test_every_variant_has_depth_from_its_name() -> None:
    for name, spec in VARIANTS.items():
        assert spec.depth == int(name.split("_")[1]), name
    assert len(VARIANTS) == 11


def test_state_dict_keys_follow_official_schema() -> None:
    with torch.device("meta"):
        train = set(create_vanillanet("vanillanet_5").state_dict())
        deploy = set(create_vanillanet("vanillanet_5", deploy=True).state_dict())
    bn = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    expected_train = (
        {"stem1.0.weight", "stem1.0.bias", "stem2.0.weight", "stem2.0.bias", "stem2.2.weight"}
        | {f"stem1.1.{k}" for k in bn} | {f"stem2.1.{k}" for k in bn} | {f"stem2.2.bn.{k}" for k in bn}
        | {f"stages.{i}.{c}.0.{w}" for i in range(3) for c in ("conv1", "conv2") for w in ("weight", "bias")}
        | {f"stages.{i}.{c}.1.{k}" for i in range(3) for c in ("conv1", "conv2") for k in bn}
        | {f"stages.{i}.act.weight" for i in range(3)} | {f"stages.{i}.act.bn.{k}" for i in range(3) for k in bn}
        | {"cls1.2.weight", "cls1.2.bias", "cls2.0.weight", "cls2.0.bias"} | {f"cls1.3.{k}" for k in bn}
    )
    expected_deploy = (
        {"stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias", "cls.2.weight", "cls.2.bias"}
        | {f"stages.{i}.{m}.{w}" for i in range(3) for m in ("conv", "act") for w in ("weight", "bias")}
    )
    assert train == expected_train
    assert deploy == expected_deploy


def test_ada_pool_variant_stem_and_pools() -> None:
    model = create_vanillanet("vanillanet_13_x1_5_ada_pool", deploy=True, num_classes=10)
    conv = model.stem[0]
    assert (conv.stride, conv.padding) == ((3, 3), (1, 1))
    pools = {i: s.pool.output_size for i, s in enumerate(model.stages)
             if isinstance(s.pool, torch.nn.AdaptiveMaxPool2d)}
    assert pools == {1: (38, 38), 2: (19, 19), 9: (10, 10)}
    assert conv(torch.zeros(1, 3, 224, 224)).shape[-1] == 75


@pytest.mark.parametrize("act_num", [0, 1, 3, 4])
def test_any_act_num_runs_in_both_forms(act_num: int) -> None:
    x = torch.randn(2, 3, SMALL_IMG, SMALL_IMG)
    for deploy in (False, True):
        model = random_model("vanillanet_5", deploy=deploy, act_num=act_num)
        with torch.no_grad():
            assert model(x).shape == (2, 10)
        act = model.stem[1] if deploy else model.stem2[2]
        assert act.weight.shape[-2:] == (2 * act_num + 1, 2 * act_num + 1)


def test_lambda_changes_training_form_output() -> None:
    model = random_model("vanillanet_5")
    x = torch.randn(1, 3, SMALL_IMG, SMALL_IMG)
    with torch.no_grad():
        linear = model(x)
        model.set_lambda(0.0)
        relu = model(x)
    assert all(stage.act_learn == 0.0 for stage in model.stages)
    assert not torch.allclose(linear, relu)


def test_forward_layers_names_every_layer() -> None:
    model = random_model("vanillanet_6")
    names = [name for name, _ in model.forward_layers(torch.randn(1, 3, SMALL_IMG, SMALL_IMG))]
    assert names == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "cls"]


def test_unknown_variant_suggests_close_name() -> None:
    with pytest.raises(ValueError, match="Did you mean vanillanet_6"):
        get_variant("vanillanet6")
