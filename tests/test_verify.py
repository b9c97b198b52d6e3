"""vanilladeploy/verify.py: the error measures, NaN handling and locating the first divergent layer."""

import math

import numpy as np
import torch
from conftest import SMALL_IMG, random_model

from vanilladeploy.reparam import reparameterize_state_dict
from vanilladeploy.verify import compare, first_divergent_layer, random_inputs, verify_outputs


def test_compare_relative_and_max_abs() -> None:
    ref = np.array([3.0, 4.0])
    result = compare(np.array([3.0, 4.5]), ref, tolerance=0.2)
    assert result.rel_l2 == 0.1 and result.max_abs == 0.5 and result
    assert not compare(np.array([3.0, 4.5]), ref, tolerance=0.05)


def test_nan_inf_or_shape_mismatch_never_pass() -> None:
    ref = np.ones(4)
    for bad in (np.array([1, 1, np.nan, 1.0]), np.array([1, np.inf, 1, 1.0]), np.ones(5)):
        result = compare(bad, ref, tolerance=math.inf)
        assert not result and not result.finite
    assert not compare(ref, np.array([1, 1, np.nan, 1.0]), tolerance=1.0)


def test_verify_outputs_fails_when_any_input_fails() -> None:
    ref = [np.ones(3), np.ones(3)]
    result = verify_outputs("x", [np.ones(3), np.array([1, 1, 2.0])], ref, tolerance=1e-5)
    assert not result and result.rel_l2 > 0.5
    assert result.as_dict()["rel_l2_per_input"][0] == 0.0


def test_random_inputs_are_seeded() -> None:
    a, b = random_inputs(2, batch=1, img_size=8, seed=3), random_inputs(2, batch=1, img_size=8, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not np.array_equal(a[0], a[1])
    assert a[0].dtype == np.float32 and a[0].shape == (1, 3, 8, 8)


def test_first_divergent_layer_names_the_broken_stage() -> None:
    train = random_model("vanillanet_6", seed=6)
    fused = reparameterize_state_dict(train.state_dict()).state_dict
    deploy = random_model("vanillanet_6", deploy=True)
    deploy.load_state_dict(fused)
    x = random_inputs(1, batch=1, img_size=SMALL_IMG)[0]
    assert first_divergent_layer(train, deploy, x) is None
    with torch.no_grad():
        deploy.stages[2].act.bias += 0.1
    assert first_divergent_layer(train, deploy, x) == "stages.2"
