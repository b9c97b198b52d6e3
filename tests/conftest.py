"""Shared helpers: random VanillaNets with randomized BatchNorm statistics and official-format checkpoints."""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from vanilladeploy.models.vanillanet import VARIANTS, VanillaNet, create_vanillanet, randomize_

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


SESSION_DIRS: set[Path] = set()
"""Directories made by session fixtures (:func:`session_dir`): they outlive every module."""


def session_dir(factory: pytest.TempPathFactory, name: str) -> Path:
    """``factory.mktemp(name)`` for a session fixture: kept until the run ends (see :func:`module_dirs_deleted`)."""
    path = factory.mktemp(name)
    SESSION_DIRS.add(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def module_dirs_deleted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """When a module ends, delete the directories its fixtures made with ``tmp_path_factory.mktemp`` (exports of
    hundreds of MB each). Kept: a failed test's ``tmp_path`` (its name starts with ``test_``; pyproject's retention
    policy deletes a passing one's) and :func:`session_dir`'s. Autouse at module scope, so it ends after the module's
    other fixtures (servers included) have stopped."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    for path in set(base.iterdir()) - before - SESSION_DIRS:
        if path.is_dir() and not path.is_symlink() and not path.name.startswith("test_"):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def small_train_model() -> VanillaNet:
    return random_model("vanillanet_5", seed=1)


@pytest.fixture(scope="session")
def official_ckpt_path(tmp_path_factory: pytest.TempPathFactory, small_train_model: VanillaNet) -> Path:
    """An official-format vanillanet_5 training checkpoint saved after the last epoch (λ = 1)."""
    path = session_dir(tmp_path_factory, "ckpt") / "checkpoint-299.pth"
    torch.save(official_checkpoint(small_train_model.state_dict(), variant="vanillanet_5"), path)
    return path


ALL_VARIANTS = list(VARIANTS)


@pytest.fixture(scope="session")
def vanillanet_5_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """``vanilladeploy export vanillanet_5 --img-size N`` (seeded random weights), made once per size for the whole
    session and shared by the serving tests: they read it, none writes into it."""
    from vanilladeploy.pipeline.export import ExportOptions, export_checkpoint

    made: dict[int, Path] = {}

    def export(img_size: int) -> Path:
        if img_size not in made:
            out = session_dir(tmp_path_factory, f"vanillanet_5_at_{img_size}") / "v5"
            export_checkpoint("vanillanet_5", ExportOptions(out_dir=out, img_size=img_size))
            made[img_size] = out
        return made[img_size]

    return export


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


CPUINFO = Path(__file__).parent / "fixtures" / "cpuinfo"
"""Real CPU descriptions (see its README): decisions made on a CPU are tested on these, not on hand-written flags."""
AVX2_ONLY, AVX512_BF16_NO_AMX, AMX = ("amd-epyc-7302p-avx2.cpuinfo", "amd-epyc-avx512-bf16-no-amx.cpuinfo",
                                      "intel-xeon-sapphire-rapids-amx.flags")
AMX_CPUINFO = "intel-xeon-amx-2core.cpuinfo"
"""A whole /proc/cpuinfo block of an AMX Xeon (AMX above is a bare lscpu flags line)."""


def cpu_flags_of(name: str) -> frozenset[str]:
    from vanilladeploy.machine import parse_cpu_flags

    return parse_cpu_flags((CPUINFO / name).read_text(encoding="utf-8"))


def _native_bf16_cpu() -> bool:
    from vanilladeploy.machine import BF16_FLAGS, cpu_flags

    return any(f in cpu_flags() for f in BF16_FLAGS)


def require_bf16() -> None:
    """Skip a bf16 test where this CPU or OpenVINO cannot compute in bf16 (the reason says which). Under
    ``CI=true`` on a CPU whose flags have native bf16, the skip is a failure (see the hook below)."""
    import openvino as ov

    from vanilladeploy.machine import bf16_missing

    reason = bf16_missing(capabilities=ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    if reason:
        pytest.skip(f"bf16: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """Under ``CI=true``, on a CPU with avx512_bf16 or amx_bf16, a skipped bf16 test is a failure: the bf16 path
    is exactly what such a CPU must run, and a skip there once hid a crash on every bf16 CPU."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and "bf16" in item.nodeid and os.environ.get("CI", "").lower() == "true" \
            and _native_bf16_cpu():
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} skipped on a CPU with native bf16 under CI=true: {report.longrepr}"


@pytest.fixture
def openvino_compiles(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, object]]:
    """Every OpenVINO compile while the test runs: (the INFERENCE_PRECISION_HINT it was given, or None; the
    precision the compiled model reports, an ``openvino.Type``). Wraps the real ``Core.compile_model``."""
    return spy_openvino_compiles(monkeypatch)


def spy_openvino_compiles(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, object]]:
    ov = require("openvino", "OpenVINO is not installed (the test extra has it)")

    seen: list[tuple[object, object]] = []
    real = ov.Core.compile_model

    def compile_model(self: object, model: object, device_name: str | None = None, config: dict | None = None,
                      **kwargs: object) -> object:
        compiled = real(self, model, device_name, config, **kwargs)
        seen.append(((config or {}).get("INFERENCE_PRECISION_HINT"), compiled.get_property("INFERENCE_PRECISION_HINT")))
        return compiled

    monkeypatch.setattr(ov.Core, "compile_model", compile_model)
    return seen


def assert_precision_stated(seen: list[tuple[object, object]], asked: set[str]) -> None:
    """Each compile stated its precision and the compiled model reports one of ``asked`` (our names)."""
    from vanilladeploy.runtimes.runners import OPENVINO_TYPE_NAMES, openvino_precision_name

    assert seen, "nothing was compiled by OpenVINO on this path"
    for hint, reported in seen:
        assert hint is not None, "compiled without INFERENCE_PRECISION_HINT (a bf16 CPU would compute in bf16)"
        runs_in = openvino_precision_name(reported)
        assert runs_in == OPENVINO_TYPE_NAMES.get(str(hint)) and runs_in in asked, (hint, reported)
