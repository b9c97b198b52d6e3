"""Every optional dependency in one table: which pip extra brings it, its install line, and whether it is here.

Modules that need an optional part ask this table (``install_hint``, ``require``) instead of writing their own
message; ``vanilladeploy doctor`` reads the same table. Imports only the standard library and ``errors``, so any
layer may use it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from vanilladeploy.errors import MissingDependencyError


@dataclass(frozen=True)
class Extra:
    """A pip extra of vanilladeploy ("" = the core install) and what it brings."""

    extra: str
    modules: tuple[str, ...]
    purpose: str
    where: str = ""
    """Where it can run at all, appended to the install line (TensorRT needs an NVIDIA GPU)."""
    package: str = ""
    """A package installed instead of an extra (onnxruntime-gpu replaces onnxruntime)."""

    @property
    def install(self) -> str:
        line = (f"pip install {self.package}" if self.package else
                f"pip install 'vanilladeploy[{self.extra}]'" if self.extra else "pip install vanilladeploy")
        return f"{line} {self.where}".rstrip()


EXTRAS: dict[str, Extra] = {
    "core": Extra("", ("torch", "onnx", "onnxruntime", "onnxsim"), "export, inspect, check"),
    "trt": Extra("trt", ("tensorrt",), "export --trt, bench --runtimes tensorrt",
                 "on a machine with an NVIDIA GPU and driver"),
    "serve": Extra("serve", ("pytriton", "tritonclient", "google.protobuf"), "repo, serve, serve-bench"),
    "bench": Extra("bench", ("torchvision", "matplotlib"), "bench: ResNet/Swin baselines and the plot"),
    "eval": Extra("eval", ("PIL",), "eval, int8 calibration (reading images)"),
    "openvino": Extra("openvino", ("openvino",), "export --openvino, eval/bench/serve on OpenVINO's CPU plugin"),
    "deploy": Extra("deploy", ("kserve", "kubernetes", "yaml"), "deploy --kserve, --k8s (the cluster's YAML files)"),
    "onnxruntime-gpu": Extra("", ("onnxruntime",), "ONNX Runtime on CUDA (bench, GPU instances in Triton)",
                             package="onnxruntime-gpu"),
}


def install_hint(name: str) -> str:
    """The one install line for the extra ``name`` (a key of :data:`EXTRAS`)."""
    return EXTRAS[name].install


def available(module: str) -> bool:
    """Whether ``module`` can be found, without importing it. A bare namespace directory (no code: what a stubs-only
    package such as ``tensorrt-stubs`` leaves behind) does not count."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent package is missing, or a broken __spec__
        return False
    return spec is not None and (spec.loader is not None or spec.origin not in (None, "namespace"))


def require(name: str, what: str) -> None:
    """Raise :class:`MissingDependencyError` (exit 3) naming ``what`` needs and the install line, before any work,
    when a module of the extra ``name`` cannot be found."""
    absent = [m for m in EXTRAS[name].modules if not available(m)]
    if absent:
        raise MissingDependencyError(f"{what} needs {absent[0]}: {install_hint(name)}")


__all__ = ["EXTRAS", "Extra", "available", "install_hint", "require"]
