"""Shared helpers: random VanillaNets with randomized BatchNorm statistics and official-format checkpoints."""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

from models.vanillanet import VARIANTS, VanillaNet, create_vanillanet, randomize_

SMALL_IMG = 32
"""The smallest input every non-ada variant accepts (stem /4, then three stride-2 pools)."""


def random_model(variant: str, *, deploy: bool = False, seed: int = 0, num_classes: int = 10,
                 act_num: int = 3) -> VanillaNet:
    """A variant with seeded random weights, non-zero biases and random BN mean/var/gamma/beta, in eval mode."""
    with torch.device("meta"):
        model = create_vanillanet(variant, deploy=deploy, num_classes=num_classes, act_num=act_num)
    return randomize_(model.to_empty(device="cpu"), seed=seed).eval()


def official_checkpoint(state_dict: dict, *, variant: str, epoch: int = 299, decay_epochs: int = 100,
                        decay_linear: bool = True, ema: dict | None = None) -> dict:
    """The container the official trainer writes (utils.save_model): model, model_ema, optimizer, epoch, scaler,
    args (an argparse.Namespace)."""
    args = argparse.Namespace(model=variant, decay_epochs=decay_epochs, decay_linear=decay_linear, act_num=3,
                              nb_classes=10, input_size=224, drop=0.0, lr=3.5e-3, model_ema_decay=[0.99996])
    return {
        "model": state_dict,
        "model_ema": ema if ema is not None else state_dict,
        "optimizer": {"state": {}, "param_groups": [{"lr": 3.5e-3, "weight_decay": 0.35, "params": [0, 1]}]},
        "epoch": epoch,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        "args": args,
    }


@pytest.fixture(scope="session")
def small_train_model() -> VanillaNet:
    return random_model("vanillanet_5", seed=1)


@pytest.fixture(scope="session")
def official_ckpt_path(tmp_path_factory: pytest.TempPathFactory, small_train_model: VanillaNet) -> Path:
    """An official-format vanillanet_5 training checkpoint saved after the last epoch (λ = 1)."""
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint-299.pth"
    torch.save(official_checkpoint(small_train_model.state_dict(), variant="vanillanet_5"), path)
    return path


ALL_VARIANTS = list(VARIANTS)


def missing_in_ci(reason: str, *, module_level: bool = False) -> None:
    """A dependency is missing: skip here, but FAIL under ``CI=true`` — CI installs every dependency the suite
    uses (not TensorRT, not a GPU: those tests are marked ``gpu`` and keep skipping), so a skip there would hide a
    broken install step. ``module_level``: called while a test module is collected."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: CI installs it, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def require(module: str, reason: str, *, module_level: bool = False) -> ModuleType:
    """``import module``, or :func:`missing_in_ci` with ``reason`` and why the import failed."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing_in_ci(f"{reason} ({type(e).__name__}: {e})", module_level=module_level)
        raise  # unreachable: skip and fail raise
