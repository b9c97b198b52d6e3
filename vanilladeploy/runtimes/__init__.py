"""Runtimes: what executes a model, behind one interface, :class:`~vanilladeploy.runtimes.runners.Runner`
(:mod:`.runners`, timed the one way per device of :mod:`.timing`); the TensorRT engine layer (:mod:`.tensorrt`)
and what a TensorRT build needs without TensorRT (:mod:`.trt_plan`).

:data:`RUNTIMES` is the one table of them (name, precisions, devices, pip extra, whether it runs our ONNX files on
the CPU): the CLI's choices, ``doctor``, ``optimize``, ``eval``, the Triton Python-backend model and ``bench`` read
it. Importing this package imports no runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from vanilladeploy.extras import EXTRAS


@dataclass(frozen=True)
class Runtime:
    """One runtime and what it can do here in principle (whether it is installed: :meth:`missing`)."""

    name: str
    label: str
    extra: str
    """The key of :data:`vanilladeploy.extras.EXTRAS` that installs it."""
    module: str
    precisions: tuple[str, ...]
    devices: tuple[str, ...]
    runs_onnx_on_cpu: bool
    """Runs our ONNX files (fp32 and the int8 QDQ graph) as they are on the CPU: ``eval --runtime``, the Triton
    Python-backend model."""

    def missing(self) -> str | None:
        """None when its module can be found, else the sentence and the install line."""
        from vanilladeploy.extras import available

        return None if available(self.module) else f"{self.module} is not installed: {EXTRAS[self.extra].install}"


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("torch", "PyTorch (eager)", "core", "torch", ("fp32", "fp16"), ("cpu", "cuda"), False),
    Runtime("onnxruntime", "ONNX Runtime", "core", "onnxruntime", ("fp32", "fp16", "int8"), ("cpu", "cuda"), True),
    Runtime("openvino", "OpenVINO (CPU plugin)", "openvino", "openvino", ("fp32", "bf16", "int8"), ("cpu",), True),
    Runtime("tensorrt", "TensorRT", "trt", "tensorrt", ("fp32", "fp16", "int8"), ("cuda",), False),
)}

def runtimes_with(precision: str) -> tuple[str, ...]:
    """The runtimes of :data:`RUNTIMES` that run ``precision``, in the table's order."""
    return tuple(name for name, r in RUNTIMES.items() if precision in r.precisions)


ONNX_RUNTIMES = tuple(name for name, r in RUNTIMES.items() if r.runs_onnx_on_cpu)
"""The runtimes that run our ONNX files on the CPU: ``eval --runtime``, ``repo/serve --runtime``."""
ARTIFACT_RUNTIMES = tuple(name for name in RUNTIMES if name != "torch")
"""The runtimes that run an exported artifact (ONNX, IR or engine): ``optimize --runtimes``."""

__all__ = ["ARTIFACT_RUNTIMES", "ONNX_RUNTIMES", "RUNTIMES", "Runtime", "runtimes_with"]
