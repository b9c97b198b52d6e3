"""vanilladeploy/runtimes/runners.py: the base Runner owns the lifecycle — activate and deactivate run a runtime's hooks
once each, ``is_active`` says which, and ``infer`` outside it is one clear error — for every runner, the real ONNX
Runtime and OpenVINO ones included."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_IMG, random_model

from vanilladeploy.runtimes.runners import ChunkedRunner, OnnxRuntimeRunner, OpenVinoRunner, Runner, TorchRunner


class _Counting(Runner):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def activate_impl(self) -> None:
        self.calls.append("activate")

    def deactivate_impl(self) -> None:
        self.calls.append("deactivate")

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return x


def test_hooks_run_once_each_and_is_active_says_which() -> None:
    runner = _Counting()
    assert not runner.is_active
    runner.activate()
    runner.activate()  # a no-op while active
    assert runner.is_active
    with runner:  # entering an active runner keeps it; leaving deactivates
        pass
    runner.deactivate()  # a no-op while inactive
    assert runner.calls == ["activate", "deactivate"] and not runner.is_active


def test_a_failed_deactivate_still_leaves_it_inactive() -> None:
    class Failing(_Counting):
        def deactivate_impl(self) -> None:
            raise OSError("device gone")

    runner = Failing()
    runner.activate()
    with pytest.raises(OSError):
        runner.deactivate()
    assert not runner.is_active


@pytest.fixture(scope="module")
def onnx_file(vanillanet_5_export: Callable[[int], Path]) -> Path:
    return vanillanet_5_export(SMALL_IMG) / "vanillanet_5.onnx"  # shared, read only


@pytest.mark.parametrize("make", [
    lambda path: TorchRunner(random_model("vanillanet_5", deploy=True, num_classes=1000)),
    lambda path: OnnxRuntimeRunner(path),
    lambda path: OpenVinoRunner(path),
    lambda path: ChunkedRunner(OnnxRuntimeRunner(path), max_batch=1),
])
def test_every_runner_refuses_infer_outside_with_and_answers_inside(onnx_file: Path, make) -> None:
    runner = make(onnx_file)
    x = np.zeros((2, 3, SMALL_IMG, SMALL_IMG), np.float32)
    with pytest.raises(RuntimeError, match=f"{type(runner).__name__}.infer before activate.*'with runner:'"):
        runner.infer(x)
    with runner:
        assert runner.is_active and runner.infer(x).shape == (2, 1000)
    assert not runner.is_active
    with pytest.raises(RuntimeError, match="before activate"):
        runner.infer(x)
